"""Policy documents as the controller's API and the agent's policy files take them."""

from __future__ import annotations

import json
from typing import Any


def policy_doc(
    name: str,
    endpoints: list[dict[str, Any]],
    *,
    domain: str | None = None,
    labels: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A ``dnsmesh/v1`` Policy; ``spec`` adds fields (``ttl``, ``strategy``, ``slices``...).

    Only the fields given are written, so a test sees the parser's defaults as they are.
    The domain defaults to ``<name>.mesh.internal``.
    """
    metadata: dict[str, Any] = {"name": name}
    if labels is not None:
        metadata["labels"] = labels
    return {
        "apiVersion": "dnsmesh/v1",
        "kind": "Policy",
        "metadata": metadata,
        "spec": {"domain": domain or f"{name}.mesh.internal", **spec, "endpoints": endpoints},
    }


def policy_text(name: str, endpoints: list[dict[str, Any]], **fields: Any) -> str:
    """:func:`policy_doc` as a policy file's text (JSON, which is YAML)."""
    return json.dumps(policy_doc(name, endpoints, **fields))
