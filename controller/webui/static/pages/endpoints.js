// Endpoint health: each address as the quorum sees it, with every agent's report, and its
// admin state (an operator's drains, which beat what health says).
import { html, useState } from "../vendor/preact-htm.module.js";
import { api } from "../api.js";
import { useResource } from "../resource.js";
import { ErrorNote, ms, percent, when } from "../widgets.js";

const REFRESH_MS = 5000; // probe reports are no revisions

export function Endpoints({ revision }) {
  const { data, error } = useResource(() => api("/v1/endpoints").then((r) => r.data), [revision], {
    everyMs: REFRESH_MS,
  });
  const [open, setOpen] = useState(new Set());
  const toggle = (address) => {
    const next = new Set(open);
    if (next.has(address)) next.delete(address);
    else next.add(address);
    setOpen(next);
  };
  return html`<section>
    <h1>Endpoints</h1>
    <${ErrorNote} error=${error} />
    ${data &&
    html`<p class="muted quorum">
        Quorum: an address is down for every agent when at least
        ${data.rule.min_agents} agents report it freshly (at most ${data.rule.stale_s} s ago)
        and most of them see it failing (ejected, or loss ≥ ${percent(data.rule.fail_loss)});
        it is up again when fewer than half do (while down, a loss above
        ${percent(data.rule.recover_loss)} still counts as failing).
        Down now: <span id="down-set">${data.down.length ? data.down.join(", ") : "none"}</span>.
      </p>
      <table class="endpoints">
        <thead><tr><th>Address</th><th>Policies</th><th>Status</th><th>Admin</th><th>Voters</th>
          <th>Failing</th><th>Latency (median)</th><th>Loss (mean)</th><th></th></tr></thead>
        <tbody>
          ${data.items.map(
            (item) => html`<tr data-address=${item.address}>
                <td><code>${item.address}</code></td>
                <td>${item.policies.join(", ") || html`<span class="muted">—</span>`}</td>
                <td><span class=${`badge ${item.status}`} data-status=${item.status}>${item.status}</span>
                  ${item.down && html`<br /><span class="muted">since ${when(item.down_since)}</span>`}</td>
                <td><span class=${`badge ${item.admin_state}`} data-admin-state=${item.admin_state}>${item.admin_state}</span>
                  ${item.drains.map((d) => html`<br /><span class="muted drain">${drainText(d)}</span>`)}</td>
                <td>${item.voters}</td>
                <td>${item.failing}</td>
                <td>${ms(item.latency_ms)}</td>
                <td>${percent(item.loss)}</td>
                <td><button type="button" onClick=${() => toggle(item.address)}>
                  ${open.has(item.address) ? "hide" : `agents (${item.agents.length})`}
                </button></td>
              </tr>
              ${open.has(item.address) &&
              html`<tr class="detail"><td colspan="9">${AgentReports(item.agents)}</td></tr>`}`,
          )}
        </tbody>
      </table>`}
  </section>`;
}

// "in pay by admin-token until 14:05 (forced)": where, who, and for how long.
function drainText(drain) {
  const where = drain.policy ? `in ${drain.policy}` : "in every policy";
  const until = drain.until ? ` until ${when(drain.until)}` : "";
  return `drained ${where} by ${drain.drained_by}${until}${drain.forced ? " (forced)" : ""}`;
}

function AgentReports(reports) {
  if (!reports.length) return html`<p class="muted">No agent has reported this address.</p>`;
  return html`<table class="reports">
    <thead><tr><th>Agent</th><th>State</th><th>Latency</th><th>Loss</th>
      <th>Failures in a row</th><th>Reported</th><th>Counts for the quorum</th></tr></thead>
    <tbody>
      ${reports.map(
        (r) => html`<tr>
          <td>${r.node_name || r.agent_id}</td>
          <td>${r.state}${r.failing ? html` <span class="badge failing">failing</span>` : null}</td>
          <td>${ms(r.latency_ms)}</td>
          <td>${percent(r.loss)}</td>
          <td>${r.consecutive_failures}</td>
          <td>${Math.round(r.age_s)} s ago</td>
          <td>${r.stale ? "no (stale)" : "yes"}</td>
        </tr>`,
      )}
    </tbody>
  </table>`;
}
