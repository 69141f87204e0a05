// A form over any JSON document: an input per value, named by its path in the API's
// spelling (spec.endpoints[1].weight), so a 422's field errors are shown at the input
// they name. Lists can grow and shrink; adding or removing a field is done as YAML.
import { html } from "./vendor/preact-htm.module.js";

/** "spec.endpoints[1].weight" for ["spec", "endpoints", 1, "weight"]. */
export function pathText(parts) {
  return parts
    .map((part, i) => (typeof part === "number" ? `[${part}]` : i ? `.${part}` : part))
    .join("");
}

/** A copy of `value` with the value at `parts` replaced (or removed: `remove`). */
export function setIn(value, parts, replacement, { remove = false } = {}) {
  if (!parts.length) return replacement;
  const [head, ...rest] = parts;
  const copy = Array.isArray(value) ? [...value] : { ...value };
  if (remove && !rest.length) {
    if (Array.isArray(copy)) copy.splice(head, 1);
    else delete copy[head];
  } else {
    copy[head] = setIn(value[head], rest, replacement, { remove });
  }
  return copy;
}

function getIn(value, parts) {
  return parts.reduce((node, part) => (node === null || node === undefined ? node : node[part]), value);
}

/**
 * The whole document; `onChange(parts, value, {remove})` reports every edit; `errors` are
 * the API's [{path, message}]; `fixed` lists paths shown but not editable; `original` (the
 * stored document) keeps a number field a number while its text does not parse.
 */
export function DocumentForm({ document, original, errors, onChange, fixed }) {
  const byPath = new Map();
  for (const error of errors) {
    byPath.set(error.path, [...(byPath.get(error.path) || []), error.message]);
  }
  const context = { byPath, onChange, fixed: new Set(fixed), original };
  return html`<div class="document-form">
    ${Object.entries(document).map(([key, value]) => Entry(context, [key], key, value))}
  </div>`;
}

function FieldErrors({ messages, path }) {
  if (!messages) return null;
  return messages.map(
    (message) => html`<span class="field-error" data-error-for=${path}>${message}</span>`,
  );
}

function Entry(context, parts, label, value) {
  const path = pathText(parts);
  const messages = context.byPath.get(path);
  const invalid = messages ? "invalid" : "";
  if (value !== null && typeof value === "object") {
    return html`<fieldset class=${`group ${invalid}`} data-path=${path} key=${path}>
      <legend>${label}</legend>
      <${FieldErrors} messages=${messages} path=${path} />
      ${Array.isArray(value) ? ListItems(context, parts, value) : Members(context, parts, value)}
    </fieldset>`;
  }
  return html`<div class=${`field ${invalid}`} key=${path}>
    <label for=${`field-${path}`}>${label}</label>
    ${Scalar(context, parts, path, value)}
    <${FieldErrors} messages=${messages} path=${path} />
  </div>`;
}

function Members(context, parts, value) {
  return Object.entries(value).map(([key, item]) => Entry(context, [...parts, key], key, item));
}

function ListItems(context, parts, items) {
  // An empty list gives no shape to copy: its first item is written as YAML.
  const add = () => context.onChange([...parts, items.length], blankLike(items[items.length - 1]));
  return html`${items.map(
      (item, index) => html`<div class="list-item" key=${index}>
        ${Entry(context, [...parts, index], `${parts[parts.length - 1]}[${index}]`, item)}
        <button type="button" class="remove" title="remove this item"
          onClick=${() => context.onChange([...parts, index], undefined, { remove: true })}>
          remove
        </button>
      </div>`,
    )}
    ${items.length > 0 && html`<button type="button" class="add" onClick=${add}>add</button>`}`;
}

// A new list item shaped like the last one: same fields, emptied (a form for it to fill).
function blankLike(item) {
  if (Array.isArray(item)) return [];
  if (item !== null && typeof item === "object") {
    return Object.fromEntries(Object.entries(item).map(([key, value]) => [key, blankLike(value)]));
  }
  return typeof item === "number" ? 0 : typeof item === "boolean" ? false : "";
}

function Scalar(context, parts, path, value) {
  const id = `field-${path}`;
  const fixed = context.fixed.has(path);
  if (typeof value === "boolean") {
    return html`<input id=${id} type="checkbox" data-path=${path} checked=${value}
      disabled=${fixed} onChange=${(e) => context.onChange(parts, e.target.checked)} />`;
  }
  const numeric = typeof value === "number" || typeof getIn(context.original, parts) === "number";
  // A number field that does not parse is sent as typed: the API names the field.
  const read = (text) => (numeric && text.trim() !== "" && !Number.isNaN(Number(text)) ? Number(text) : text);
  return html`<input id=${id} type="text" inputmode=${numeric ? "decimal" : "text"}
    data-path=${path} value=${value === null ? "" : String(value)}
    placeholder=${value === null ? "null" : ""} readonly=${fixed}
    onInput=${(e) => context.onChange(parts, read(e.target.value))} />`;
}
