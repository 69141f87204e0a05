// The audit trail, newest first, each entry's before and after as a diff.
import { html, useState } from "../vendor/preact-htm.module.js";
import { api } from "../api.js";
import { diffLines } from "../diff.js";
import { useResource } from "../resource.js";
import { Diff, ErrorNote, when } from "../widgets.js";
import { toYaml } from "../yaml.js";

const PAGE = 50;

export function Audit({ revision }) {
  const first = useResource(() => api(`/v1/audit?limit=${PAGE}`).then((r) => r.data), [revision]);
  // The older pages loaded below the first; they follow the first page they were read
  // after (`base`), so a live reload of the first page starts them over, leaving no gap.
  const [loaded, setOlder] = useState({ base: null, items: [], next: undefined, error: null });
  const [open, setOpen] = useState(null);
  if (!first.data) return html`<section><h1>Audit</h1><${ErrorNote} error=${first.error} /></section>`;
  const older = loaded.base === first.data ? loaded : { items: [], next: undefined, error: null };
  const items = [...first.data.items, ...older.items];
  const next = older.next === undefined ? first.data.next_before : older.next;
  const base = first.data;
  const toggle = (id) => setOpen(open === id ? null : id);
  const more = () =>
    api(`/v1/audit?limit=${PAGE}&before=${next}`).then(
      ({ data }) =>
        setOlder({ base, items: [...older.items, ...data.items], next: data.next_before, error: null }),
      (error) => setOlder({ ...older, base, error }),
    );
  return html`<section>
    <h1>Audit</h1>
    <${ErrorNote} error=${first.error || older.error} />
    <table class="audit">
      <thead><tr><th>When</th><th>Who</th><th>What</th><th>Target</th><th>Revision</th></tr></thead>
      <tbody>
        ${items.map(
          (entry) => html`<tr class="entry" data-audit=${entry.id} tabindex="0"
              title="show what changed" aria-expanded=${open === entry.id}
              onClick=${() => toggle(entry.id)}
              onKeyDown=${(e) => (e.key === "Enter" || e.key === " ") && toggle(entry.id)}>
              <td>${when(entry.at)}</td>
              <td>${entry.actor}</td>
              <td><code>${entry.operation}</code></td>
              <td>${entry.target}</td>
              <td>${entry.revision ?? "—"}</td>
            </tr>
            ${open === entry.id &&
            html`<tr class="detail"><td colspan="5">
              <${Diff} lines=${diffLines(toYaml(entry.before, { keepRevision: true }), toYaml(entry.after, { keepRevision: true }))} />
            </td></tr>`}`,
        )}
      </tbody>
    </table>
    ${next ? html`<button type="button" onClick=${more}>Older entries</button>` : null}
  </section>`;
}
