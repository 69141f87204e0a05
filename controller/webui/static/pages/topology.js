// The topology: agents (rows) by endpoints (columns), each cell the link's latency and
// loss as colour (colours.js), from GET /v1/topology.
import { html } from "../vendor/preact-htm.module.js";
import { api } from "../api.js";
import { LOSSY, SLOW_MS, linkColour } from "../colours.js";
import { useResource } from "../resource.js";
import { ErrorNote, ms, percent } from "../widgets.js";

const REFRESH_MS = 5000;

export function Topology({ revision }) {
  const { data, error } = useResource(() => api("/v1/topology").then((r) => r.data), [revision], {
    everyMs: REFRESH_MS,
  });
  return html`<section>
    <h1>Topology</h1>
    <${ErrorNote} error=${error} />
    ${data && Grid(data)}
    <p class="legend">
      <span class="swatch" style=${{ background: linkColour({ state: "healthy", latency_ms: 0, loss: 0 }) }}></span> fast, no loss
      <span class="swatch" style=${{ background: linkColour({ state: "healthy", latency_ms: SLOW_MS / 2, loss: 0 }) }}></span> ${SLOW_MS / 2} ms or ${percent(LOSSY / 2)} loss
      <span class="swatch" style=${{ background: linkColour({ state: "healthy", latency_ms: SLOW_MS, loss: 0 }) }}></span> ${SLOW_MS} ms, ${percent(LOSSY)} loss or ejected
      <span class="swatch" style=${{ background: linkColour({ stale: true }) }}></span> stale or unknown
      <span class="swatch" style=${{ background: linkColour(null) }}></span> not probed
    </p>
  </section>`;
}

function Grid(data) {
  if (!data.agents.length || !data.endpoints.length) {
    return html`<p class="muted">Nothing to draw yet: no agent has reported a probe.</p>`;
  }
  const links = new Map(data.links.map((link) => [`${link.agent_id} ${link.address}`, link]));
  return html`<table class="topology" id="topology">
    <thead><tr><th>Agent \\ endpoint</th>
      ${data.endpoints.map(
        (e) => html`<th class=${e.down ? "down" : ""} title=${e.policies.join(", ")}>
          <code>${e.address}</code>${e.down ? html`<br /><span class="badge down">down</span>` : null}
        </th>`,
      )}
    </tr></thead>
    <tbody>
      ${data.agents.map(
        (agent) => html`<tr>
          <th>${agent.node_name || agent.agent_id}</th>
          ${data.endpoints.map((endpoint) => {
            const link = links.get(`${agent.agent_id} ${endpoint.address}`);
            return html`<td class="cell" data-agent=${agent.agent_id} data-address=${endpoint.address}
              style=${{ background: linkColour(link) }}
              title=${link ? `${link.state}, ${ms(link.latency_ms)}, ${percent(link.loss)} loss, ${Math.round(link.age_s)} s ago` : "not probed"}>
              ${link ? html`${ms(link.latency_ms)}<br />${percent(link.loss)}` : ""}
            </td>`;
          })}
        </tr>`,
      )}
    </tbody>
  </table>`;
}
