// Editing a policy: a form (or its YAML), checked by the API as a dry run (errors shown
// at the fields they name), a diff of what would change, then the write, conditional on
// the revision the edit started from (If-Match): someone else's change in between is a
// 412, not lost.
import { html, useEffect, useState } from "../vendor/preact-htm.module.js";
import { ApiError, api } from "../api.js";
import { diffLines } from "../diff.js";
import { DocumentForm, setIn } from "../form.js";
import { Diff, ErrorNote } from "../widgets.js";
import { fromYaml, toYaml } from "../yaml.js";

// Shown, not editable: what names the policy, and what the store sets.
const FIXED = ["apiVersion", "kind", "metadata.name"];

function withoutRevision(document) {
  const { revision: _revision, ...metadata } = document.metadata || {};
  return { ...document, metadata };
}

export function PolicyEdit({ name, who, onSaved }) {
  const path = `/v1/policies/${encodeURIComponent(name)}`;
  const [stored, setStored] = useState(null); // {document, etag}
  const [draft, setDraft] = useState(null);
  const [yamlText, setYamlText] = useState(null); // non-null: editing as YAML
  const [problem, setProblem] = useState(null); // ApiError or Error
  const [review, setReview] = useState(null); // the diff the dry run would store
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    api(path).then(
      ({ data, etag }) => {
        setStored({ document: withoutRevision(data), etag });
        setDraft(withoutRevision(data));
      },
      setProblem,
    );
  }, [path]);

  if (!draft) return html`<section><h1>Edit ${name}</h1><${ErrorNote} error=${problem} /></section>`;

  const fields = problem instanceof ApiError ? problem.fields : [];
  const change = (parts, value, options) => {
    setDraft((old) => setIn(old, parts, value, options));
    setReview(null);
  };
  const current = () => (yamlText === null ? draft : fromYaml(yamlText));
  const toYamlMode = () => {
    setYamlText(toYaml(draft));
    setProblem(null);
  };
  const toFormMode = () => {
    try {
      setDraft(fromYaml(yamlText));
      setYamlText(null);
      setProblem(null);
    } catch (error) {
      setProblem(error);
    }
  };
  const send = async (dryRun) => {
    setBusy(true);
    try {
      const document = current();
      const answer = await api(`${path}${dryRun ? "?dry_run=true" : ""}`, {
        method: "PUT",
        body: document,
        headers: dryRun ? {} : { "If-Match": stored.etag },
      });
      setProblem(null);
      if (dryRun) {
        const after = toYaml(withoutRevision(answer.data));
        setReview(diffLines(toYaml(stored.document), after));
      } else {
        onSaved(answer.data.metadata.revision);
      }
    } catch (error) {
      setProblem(error);
      setReview(null);
    } finally {
      setBusy(false);
    }
  };

  return html`<section>
    <h1>Edit ${name}</h1>
    ${who.may["policies:write"] ||
    html`<p class="notice">Your role (${who.role}) may not change policies; the API will refuse a write.</p>`}
    <${ErrorNote} error=${problem} />
    ${fields.length > 0 &&
    html`<ul class="field-errors">${fields.map((f) => html`<li><code>${f.path || "(document)"}</code> ${f.message}</li>`)}</ul>`}
    <div class="tabs">
      <button type="button" class=${yamlText === null ? "active" : ""} onClick=${toFormMode}
        disabled=${yamlText === null}>Form</button>
      <button type="button" class=${yamlText === null ? "" : "active"} onClick=${toYamlMode}
        disabled=${yamlText !== null}>YAML</button>
    </div>
    ${yamlText === null
      ? html`<${DocumentForm} document=${draft} original=${stored.document} errors=${fields}
          onChange=${change} fixed=${FIXED} />`
      : html`<textarea id="yaml-editor" spellcheck="false" rows="24" value=${yamlText}
          onInput=${(e) => { setYamlText(e.target.value); setReview(null); }} />`}
    <div class="actions">
      <button type="button" id="review" disabled=${busy} onClick=${() => send(true)}>Review changes</button>
      <a href=${`#/policies/${encodeURIComponent(name)}`}>Cancel</a>
    </div>
    ${review &&
    html`<div class="review">
      <h2>What will change</h2>
      <${Diff} lines=${review} />
      <button type="button" id="save" class="primary" disabled=${busy} onClick=${() => send(false)}>
        Save
      </button>
    </div>`}
  </section>`;
}
