// The policies: a list filtered by label, one policy as YAML with its rollout (a canary's
// group, share, step and state) and served share.
import { html, useState } from "../vendor/preact-htm.module.js";
import { api, labelQuery } from "../api.js";
import { useResource } from "../resource.js";
import { ShareChart } from "../share.js";
import { ErrorNote, Labels, when } from "../widgets.js";
import { toYaml } from "../yaml.js";

export function PolicyList({ revision }) {
  const [typed, setTyped] = useState("");
  const [filter, setFilter] = useState("");
  const { data, error } = useResource(
    () => api(`/v1/policies${labelQuery(filter)}`).then((r) => r.data),
    [revision, filter],
  );
  const labelErrors = error && error.status === 422 ? error.fields : [];
  const submit = (event) => {
    event.preventDefault();
    setFilter(typed);
  };
  return html`<section>
    <h1>Policies</h1>
    <form class="filter" onSubmit=${submit}>
      <label for="label-filter">Labels</label>
      <input id="label-filter" name="label" placeholder="team=payments, tier=frontend"
        value=${typed} onInput=${(e) => setTyped(e.target.value)} />
      <button type="submit">Filter</button>
      ${labelErrors.map((f) => html`<span class="field-error" data-error-for="label">${f.message}</span>`)}
    </form>
    ${labelErrors.length ? null : html`<${ErrorNote} error=${error} />`}
    ${data &&
    html`<table class="policies">
      <thead><tr><th>Name</th><th>Domain</th><th>Strategy</th><th>Endpoints</th>
        <th>Labels</th><th>Revision</th></tr></thead>
      <tbody>
        ${data.items.map(
          (policy) => html`<tr data-policy=${policy.metadata.name}>
            <td><a href=${`#/policies/${encodeURIComponent(policy.metadata.name)}`}>${policy.metadata.name}</a></td>
            <td>${policy.spec.domain}</td>
            <td>${policy.spec.strategy}</td>
            <td>${policy.spec.endpoints.length}</td>
            <td><${Labels} labels=${policy.metadata.labels} /></td>
            <td>${policy.metadata.revision}</td>
          </tr>`,
        )}
      </tbody>
    </table>
    ${data.items.length ? null : html`<p class="muted">No policies${filter ? " with these labels" : ""}.</p>`}`}
  </section>`;
}

export function PolicyView({ name, revision, who }) {
  const { data, error } = useResource(
    () => api(`/v1/policies/${encodeURIComponent(name)}`).then((r) => r.data),
    [name, revision],
  );
  const mayEdit = who.may["policies:write"];
  return html`<section>
    <h1>Policy ${name}</h1>
    <${ErrorNote} error=${error} />
    ${data &&
    html`<p class="muted">Last changed at revision <span class="policy-revision">${data.metadata.revision}</span>.</p>
      ${mayEdit && html`<p><a class="button" id="edit" href=${`#/policies/${encodeURIComponent(name)}/edit`}>Edit</a></p>`}
      ${data.spec.canary && html`<${Rollout} name=${name} revision=${revision} />`}
      <${ShareChart} name=${name} />
      <pre class="yaml" id="policy-yaml">${toYaml(data)}</pre>`}
  </section>`;
}

// GET /v1/policies/NAME/rollout: every transition is a revision, so the revision reloads it.
// 409 no_rollout is a canary the engine has not started yet (its next round does).
function Rollout({ name, revision }) {
  const { data, error } = useResource(
    () =>
      api(`/v1/policies/${encodeURIComponent(name)}/rollout`).then(
        (r) => r.data,
        (e) => {
          if (e.code === "no_rollout") return { state: null };
          throw e;
        },
      ),
    [name, revision],
  );
  return html`<section class="rollout" id="rollout">
    <h2>Rollout</h2>
    <${ErrorNote} error=${error} />
    ${data && !data.state && html`<p class="muted">Not started yet.</p>`}
    ${data &&
    data.state &&
    html`<p data-state=${data.state} data-share=${data.share}>
        Group <code id="rollout-group">${data.group}</code> answers
        <strong id="rollout-share">${data.share}%</strong>, step
        <span id="rollout-step">${data.step} of ${data.steps.length}</span>
        (${data.steps.join(" → ")} %),
        <span class=${`badge ${data.state}`} id="rollout-state">${data.state}</span>${data.next_step_at
          ? html`; next step at ${when(data.next_step_at)}`
          : null}.
      </p>
      <p class="muted" id="rollout-reason">${data.reason} (revision ${data.revision})</p>`}
  </section>`;
}
