// The policies: a list filtered by label, one policy as YAML.
import { html, useState } from "../vendor/preact-htm.module.js";
import { api, labelQuery } from "../api.js";
import { useResource } from "../resource.js";
import { ShareChart } from "../share.js";
import { ErrorNote, Labels } from "../widgets.js";
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
      <${ShareChart} name=${name} />
      <pre class="yaml" id="policy-yaml">${toYaml(data)}</pre>`}
  </section>`;
}
