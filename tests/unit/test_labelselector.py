"""The equality selectors of POST /v1/apply and ``dnsmesh apply -l`` (Kubernetes' text form)."""

from __future__ import annotations

import pytest

from controller.services.policy_rules import content, same_content
from dnsmesh.labelselector import SelectorError, parse_equality_selector


def test_equality_requirements_are_anded_and_double_equals_is_the_same() -> None:
    assert parse_equality_selector("") == {}
    assert parse_equality_selector("team=pay") == {"team": "pay"}
    assert parse_equality_selector(" team == pay , env=prod ") == {"team": "pay", "env": "prod"}
    assert parse_equality_selector("app.kubernetes.io/name=x,empty=") == {
        "app.kubernetes.io/name": "x",
        "empty": "",
    }
    assert parse_equality_selector("team=pay,team=pay") == {"team": "pay"}


@pytest.mark.parametrize(
    ("selector", "said"),
    [
        ("team!=pay", "negation"),
        ("!team", "negation"),
        ("team", "is not KEY=VALUE"),
        ("team in (a,b)", "is not KEY=VALUE"),
        ("=pay", "the key must be"),
        ("-team=pay", "the key must be"),
        ("team=" + "x" * 64, "at most 63"),
        ("team=a\tb", "at most 63 printable"),
        ("team=a,,env=b", "is not KEY=VALUE"),
        ("team=a,team=b", "twice with different values"),
    ],
)
def test_anything_but_equality_is_refused_by_name(selector: str, said: str) -> None:
    with pytest.raises(SelectorError, match=said):
        parse_equality_selector(selector)


def test_same_content_agrees_with_comparing_copies_without_the_revision() -> None:
    stored = {"kind": "Policy", "metadata": {"name": "a", "revision": 7}, "spec": {"ttl": 5}}
    wanted = {"kind": "Policy", "metadata": {"name": "a"}, "spec": {"ttl": 5}}
    assert same_content(stored, wanted) and content(stored) == wanted
    changed = {**wanted, "spec": {"ttl": 6}}
    assert not same_content(stored, changed) and content(stored) != changed
    assert same_content(wanted, wanted)
    assert stored["metadata"] == {"name": "a", "revision": 7}  # not modified
