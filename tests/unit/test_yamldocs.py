"""dnsmesh.yamldocs gives what PyYAML's safe loader gives: the same data or the same error."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsmesh.yamldocs import Error, PlainLoader, load_documents
from tests.support.policies import policy_doc

SAFE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def pyyaml(text: str) -> list[Any]:
    return list(yaml.load_all(text, Loader=SAFE))


# Scalars whose implicit tags differ (YAML 1.1 as PyYAML reads it), quoted and not.
SCALARS = [
    "yes", "no", "on", "off", "true", "False", "~", "null", "", "0", "-12", "0o17", "017",
    "0x1F", "1_000", "3.5", ".inf", "-.Inf", ".nan", "1e3", "2026-12-04",
    "2026-12-04T10:00:00Z", "10.0.0.1", "fd00::1", "5s", "svc-1.mesh.internal", "<<", "=",
    "'quoted'", '"double"', "'yes'", '"12"',
]  # fmt: skip

CASES = {
    "a policy": yaml.safe_dump(policy_doc("web", [{"address": "10.0.0.1", "weight": 5}])),
    "several documents": "a: 1\n---\n---\nb: [x, y]\n...\n",
    "flow and block": "spec: {endpoints: [{address: 10.0.0.1}, {address: fd00::1}]}\nl:\n- 1\n",
    "anchors and aliases": "base: &b {weight: 5}\nuse: [*b, *b]\nsame: *b\n",
    "a merge key": "base: &b {weight: 5, priority: 1}\nend: {<<: *b, weight: 7}\n",
    "merge of a list": "a: &a {x: 1}\nb: &b {y: 2}\nc: {<<: [*a, *b], z: 3}\n",
    "a set and an omap": "s: !!set {a, b}\no: !!omap [{a: 1}, {b: 2}]\npairs: !!pairs [{a: 1}]\n",
    "explicit tags": "i: !!int '7'\nf: !!float '1'\ns: !!str 12\nb: !!binary aGk=\n",
    "complex keys": "? [1, 2]\n: tuple-ish\n",
    "a mapping key": "? {a: 1}\n: v\n",
    "an unknown tag": "a: !thing 1\n",
    "a python tag": "a: !!python/object:os.system ls\n",
    "duplicate keys": "a: 1\na: 2\n",
    "timestamps": "d: 2026-12-04\nt: 2026-12-04 10:00:00.5 +01:00\n",
    "not YAML": "a: [1, 2\n",
    "a tab": "a:\n\t- 1\n",
}


def outcome(load: Any, text: str) -> tuple[str, Any]:
    try:
        return "data", load(text)
    except Error as exc:
        return "error", (type(exc), str(exc))


@pytest.mark.parametrize("text", list(CASES.values()), ids=list(CASES))
def test_every_kind_of_document_loads_as_pyyaml_loads_it(text: str) -> None:
    ours, theirs = outcome(load_documents, text), outcome(pyyaml, text)
    assert ours == theirs
    if "use:" in text:
        use = ours[1][0]["use"]
        assert use[0] is use[1] is ours[1][0]["same"]  # an alias is the object, not a copy


def test_a_recursive_alias_is_built_as_pyyaml_builds_it() -> None:
    """A list that holds itself: left to PyYAML's constructor, which makes one."""
    ((ours,), (theirs,)) = load_documents("a: &a [1, *a]\n"), pyyaml("a: &a [1, *a]\n")
    assert ours["a"][0] == theirs["a"][0] == 1
    assert ours["a"][1] is ours["a"] and theirs["a"][1] is theirs["a"]


def test_timestamps_and_binary_are_what_the_safe_loader_makes() -> None:
    (data,) = load_documents("d: 2026-12-04\nb: !!binary aGk=\n")
    assert data == {"d": datetime.date(2026, 12, 4), "b": b"hi"}


@settings(max_examples=150, deadline=None)
@given(
    st.recursive(
        st.sampled_from(SCALARS),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.sampled_from(SCALARS[:20]), children, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_generated_documents_load_as_pyyaml_loads_them(tree: Any) -> None:
    """Trees of those scalars, written out as flow YAML without quoting, read back alike."""

    def flow(node: Any) -> str:
        if isinstance(node, list):
            return "[" + ", ".join(flow(n) for n in node) + "]"
        if isinstance(node, dict):
            return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in node.items()) + "}"
        return str(node)

    text = f"doc: {flow(tree)}\n---\n- {flow(tree)}\n"
    assert outcome(load_documents, text) == outcome(pyyaml, text)


def test_the_tag_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PlainLoader, "_resolved", {})
    monkeypatch.setattr("dnsmesh.yamldocs._CACHE_SIZE", 10)
    load_documents("\n".join(f"k{i}: v{i}" for i in range(50)))
    assert len(PlainLoader._resolved) == 10
