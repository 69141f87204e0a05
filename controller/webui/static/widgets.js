// Small pieces the pages share.
import { html } from "./vendor/preact-htm.module.js";

export function ErrorNote({ error }) {
  if (!error) return null;
  const status = error.status ? `${error.status} ${error.code}: ` : "";
  return html`<p class="error" role="alert" data-status=${error.status || ""}>
    ${status}${error.message}
  </p>`;
}

export function Labels({ labels }) {
  const pairs = Object.entries(labels || {});
  if (!pairs.length) return html`<span class="muted">—</span>`;
  return pairs.map(([key, value]) => html`<span class="chip">${key}=${value}</span> `);
}

export function Diff({ lines }) {
  if (!lines.some((line) => line.op !== " ")) return html`<p class="muted">No changes.</p>`;
  return html`<pre class="diff">${lines.map(
    (line) =>
      html`<div class=${{ "+": "added", "-": "removed", " ": "same" }[line.op]}>${line.op} ${line.text}</div>`,
  )}</pre>`;
}

export function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

export function ms(value) {
  return value === null || value === undefined ? "—" : `${Math.round(value * 10) / 10} ms`;
}

export function percent(value) {
  return value === null || value === undefined ? "—" : `${Math.round(value * 100)}%`;
}
