// A policy's served share against its intended weights (GET /v1/policies/NAME/share):
// two bars per endpoint, side by side, drawn in SVG (attributes, no inline style: the CSP
// allows none), and a notice while the drift is flagged.
import { html, useState } from "./vendor/preact-htm.module.js";
import { api } from "./api.js";
import { useResource } from "./resource.js";
import { ErrorNote, percent } from "./widgets.js";

const BAR = 240; // px for a share of 1
const ROW = 30;
const LABEL = 150;

export function ShareChart({ name }) {
  const [windowS, setWindowS] = useState(300);
  const { data, error } = useResource(
    () => api(`/v1/policies/${encodeURIComponent(name)}/share?window=${windowS}`).then((r) => r.data),
    [name, windowS],
    { everyMs: 5000 }, // answer reports are no revisions
  );
  return html`<section class="share" id="share">
    <h2>Served share
      <select id="share-window" value=${windowS} onChange=${(e) => setWindowS(Number(e.target.value))}>
        <option value="300">last 5 min</option>
        <option value="3600">last hour</option>
      </select>
    </h2>
    <${ErrorNote} error=${error} />
    ${data && html`
      ${data.flagged &&
      html`<p class="notice share-flagged" id="share-flagged">Served share drifts from the
        weights: ${data.drift.toFixed(3)} over ${data.answers} answers in the last
        ${data.window_s} s (flagged above ${data.threshold}).</p>`}
      <svg class="share-chart" width=${LABEL + 2 * BAR + 120} height=${data.endpoints.length * ROW + 24}
        role="img" aria-label="served and intended share per endpoint">
        <text x="0" y="14" class="legend-text">endpoint</text>
        <rect x=${LABEL} y="4" width="12" height="12" class="intended" />
        <text x=${LABEL + 16} y="14" class="legend-text">intended</text>
        <rect x=${LABEL + 90} y="4" width="12" height="12" class="served" />
        <text x=${LABEL + 106} y="14" class="legend-text">served</text>
        ${data.endpoints.map((e, i) => {
          const y = 24 + i * ROW;
          return html`<g data-address=${e.address}>
            <text x="0" y=${y + 15}>${e.address}</text>
            <rect class="intended" data-share=${e.intended} x=${LABEL} y=${y + 2}
              width=${e.intended * BAR} height="11" />
            <rect class="served" data-share=${e.served} x=${LABEL} y=${y + 14}
              width=${e.served * BAR} height="11" />
            <text x=${LABEL + BAR + 8} y=${y + 15} class="legend-text">
              ${percent(e.served)} of ${e.answers} (intended ${percent(e.intended)})</text>
          </g>`;
        })}
      </svg>
      <p class="muted" id="share-drift">Drift ${data.drift.toFixed(3)} over ${data.answers} answers
        in the last ${data.window_s} s.</p>`}
  </section>`;
}
