// The topology's cell colours: green for a fast, loss-free link, through yellow, to red
// for a slow, lossy or failing one; grey where nothing (fresh) is known.

export const SLOW_MS = 200; // at or past this latency a link is drawn red
export const LOSSY = 0.5; // at or past this loss a link is drawn red

export const NO_LINK = "rgb(226, 232, 240)";
export const STALE = "rgb(203, 213, 225)";
export const FAILING = "rgb(220, 38, 38)";

/** How bad a link is, 0 (good) to 1 (bad), from its latency and loss. */
export function badness(link) {
  if (link.state === "ejected") return 1;
  const latency = link.latency_ms === null ? 1 : Math.min(link.latency_ms / SLOW_MS, 1);
  return Math.max(latency, Math.min(link.loss / LOSSY, 1));
}

/** The CSS colour of a link's cell. */
export function linkColour(link) {
  if (!link) return NO_LINK;
  if (link.stale || link.state === "unknown") return STALE;
  if (link.state === "ejected") return FAILING;
  return `hsl(${Math.round(120 * (1 - badness(link)))} 70% 42%)`; // 120 green .. 0 red
}
