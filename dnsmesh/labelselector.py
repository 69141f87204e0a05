"""Label selectors in Kubernetes' text form, equality requirements only.

``team=payments,env==prod`` is every label pair required (``=`` and ``==`` mean the same, as
in Kubernetes); an empty selector requires nothing. The set-based and negative forms
(``env!=prod``, ``env in (a,b)``, ``!env``, a bare ``env``) are refused by name rather than
read as something else: what a prune deletes must be exactly what the operator wrote.
"""

from __future__ import annotations

import re

# The same key and value shapes as a policy's metadata.labels (dnsmesh.policy.LabelKey).
_KEY_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,62})$")
_VALUE_RE = re.compile(r"^[^\x00-\x1f\x7f,]{0,63}$")


class SelectorError(ValueError):
    """A selector that is not a list of ``KEY=VALUE``; the message names the requirement."""


def parse_equality_selector(text: str) -> dict[str, str]:
    """The required labels of ``KEY=VALUE[,KEY=VALUE...]``; SelectorError for anything else
    (a key twice with different values could match nothing, so it is refused too)."""
    wanted: dict[str, str] = {}
    if not text.strip():
        return wanted
    for requirement in text.split(","):
        item = requirement.strip()
        if "!=" in item or item.startswith("!"):
            raise SelectorError(f"{item!r}: only equality (KEY=VALUE) is supported, not negation")
        key, sep, value = item.partition("==") if "==" in item else item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise SelectorError(f"{item!r} is not KEY=VALUE")
        if not _KEY_RE.match(key):
            raise SelectorError(
                f"{item!r}: the key must be 1-63 letters, digits, '.', '_', '/' or '-'"
            )
        if not _VALUE_RE.match(value):
            raise SelectorError(f"{item!r}: the value must be at most 63 printable characters")
        if wanted.get(key, value) != value:
            raise SelectorError(f"{key!r} is required twice with different values")
        wanted[key] = value
    return wanted
