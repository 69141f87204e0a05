// The agents: where each runs, how it is connected, and whether it runs the newest revision.
import { html } from "../vendor/preact-htm.module.js";
import { api } from "../api.js";
import { useResource } from "../resource.js";
import { ErrorNote, Labels, when } from "../widgets.js";

// ACKs and connections are no revisions: the list is also read again on this timer.
const REFRESH_MS = 5000;

function convergence(agent, revision) {
  if (agent.applied_revision === null) return ["unknown", "never reported"];
  if (agent.applied_revision >= revision) return ["converged", "converged"];
  return ["behind", `behind by ${revision - agent.applied_revision}`];
}

export function Agents({ revision }) {
  const { data, error } = useResource(() => api("/v1/agents").then((r) => r.data), [revision], {
    everyMs: REFRESH_MS,
  });
  return html`<section>
    <h1>Agents</h1>
    <${ErrorNote} error=${error} />
    ${data &&
    html`<p class="muted">Revision ${data.revision} is the newest.</p>
      <table class="agents">
        <thead><tr><th>Node</th><th>Labels</th><th>Transport</th><th>Revision</th>
          <th>State</th><th>Last NACK</th><th>Shadowed policies</th></tr></thead>
        <tbody>
          ${data.items.map((agent) => {
            const [state, text] = convergence(agent, data.revision);
            return html`<tr data-agent=${agent.agent_id}>
              <td><strong>${agent.node_name}</strong><br /><code class="muted">${agent.agent_id}</code></td>
              <td><${Labels} labels=${agent.labels} /></td>
              <td>${agent.transport}
                <span class=${agent.connected ? "badge ok" : "badge off"}>
                  ${agent.connected ? "connected" : `gone ${when(agent.disconnected_at)}`}
                </span></td>
              <td>${agent.applied_revision ?? "—"}</td>
              <td><span class=${`badge ${state}`} data-state=${state}>${text}</span></td>
              <td>${agent.last_nack
                ? html`revision ${agent.last_nack.revision}: ${agent.last_nack.reason}
                    <br /><span class="muted">${when(agent.last_nack.at)}</span>`
                : html`<span class="muted">—</span>`}</td>
              <td>${(agent.shadowed || []).length
                ? agent.shadowed.map((s) => html`<span class="chip" title=${s.reason}>${s.name}</span> `)
                : html`<span class="muted">—</span>`}</td>
            </tr>`;
          })}
        </tbody>
      </table>
      ${data.items.length ? null : html`<p class="muted">No agent has connected yet.</p>`}`}
  </section>`;
}
