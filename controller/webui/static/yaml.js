// Policies as YAML, the way `dnsmesh apply` files are written.
import { dump, load } from "./vendor/js-yaml.mjs";

/** A document as YAML; metadata.revision (the store's, not the author's) left out. */
export function toYaml(document, { keepRevision = false } = {}) {
  if (document === null || document === undefined) return "";
  let shown = document;
  if (!keepRevision && document.metadata && "revision" in document.metadata) {
    const { revision: _revision, ...metadata } = document.metadata;
    shown = { ...document, metadata };
  }
  return dump(shown, { noRefs: true, lineWidth: 100, sortKeys: false });
}

/** The text as a document; throws Error("line N: ...") when it is not YAML. */
export function fromYaml(text) {
  try {
    return load(text);
  } catch (error) {
    const line = error.mark ? `line ${error.mark.line + 1}: ` : "";
    throw new Error(`${line}${error.reason || error.message}`);
  }
}
