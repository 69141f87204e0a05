"""Incremental compile and swap: what did not change keeps its compiled form, answers stay right."""

from __future__ import annotations

import random
from pathlib import Path

from agent.answer_counts import AnswerCounts
from agent.probes.monitor import HealthMonitor
from agent.served import ServedSnapshot
from dnsmesh.health import decide_weights
from dnsmesh.policy import Policy
from dnsmesh.policyfile import ParsedFiles, load_policy_path
from dnsmesh.reweigh import Effective, reweigh
from dnsmesh.snapshot import DEFAULT_SLICE, compile_snapshot
from tests.unit.test_snapshot import addresses, ask, ep, policy


def _set(count: int) -> list[Policy]:
    return [
        policy(f"p{i}", f"p{i}.example", [ep(f"10.0.{i}.1"), ep(f"10.0.{i}.2")])
        for i in range(count)
    ]


def test_an_unchanged_policy_keeps_its_compiled_object_and_its_serial() -> None:
    policies = _set(4)
    first = compile_snapshot(policies, revision=3)
    moved = policy("p1", "p1.example", [ep("10.9.9.9")])
    added = policy("p9", "p9.example", [ep("10.0.9.1")])
    second = compile_snapshot([policies[0], moved, policies[2], added], revision=4, previous=first)
    assert second.by_name["p0"] is first.by_name["p0"]
    assert second.by_name["p2"] is first.by_name["p2"]
    assert second.by_name["p1"] is not first.by_name["p1"]
    assert second.changed == {"p1", "p9", "p3"}  # changed, added, removed
    assert second.changed_since(first) == second.changed
    assert second.changed_since(second) is None  # not compiled from itself: compare all
    assert second.lookup(b"\x02p3\x07example\x00") is None
    # The changed policy answers its new endpoint, the kept one its own.
    assert addresses(ask(second, "p1.example")) == ["10.9.9.9"]
    assert sorted(addresses(ask(second, "p0.example", rng=random.Random(1)))) in (
        ["10.0.0.1"],
        ["10.0.0.2"],
    )
    # The SOA serial is the revision a policy was last compiled at: a kept one says 3 (its
    # answers did not change at 4), a changed or new one 4.
    assert ask(second, "p0.example", "MX").authority[0][0].serial == 3
    assert ask(second, "p1.example", "MX").authority[0][0].serial == 4
    assert ask(second, "p9.example", "MX").authority[0][0].serial == 4


def test_an_equal_but_new_policy_object_or_a_new_canary_share_compiles_again() -> None:
    canary = policy(
        "c",
        "c.example",
        [ep("10.0.0.1", group="stable"), ep("10.0.0.2", group="canary")],
        canary={"group": "canary", "steps": [10, 100], "interval": "5s"},
    )
    first = compile_snapshot([canary], canary_shares={"c": 0})
    same = compile_snapshot([canary], canary_shares={"c": 0}, previous=first)
    assert same.by_name["c"] is first.by_name["c"] and same.changed == frozenset()
    shifted = compile_snapshot([canary], canary_shares={"c": 100}, previous=first)
    assert shifted.by_name["c"] is not first.by_name["c"] and shifted.changed == {"c"}
    assert addresses(ask(shifted, "c.example")) == ["10.0.0.2"]
    copy = canary.model_copy()
    assert compile_snapshot([copy], canary_shares={"c": 0}, previous=first).changed == {"c"}


def test_reweigh_visits_only_the_weighted_policies() -> None:
    base = compile_snapshot(_set(3))
    served = reweigh(base, {"p1": {"10.0.1.2": 0}}, {}, frozenset({"p2"}))
    assert served.by_name["p0"] is base.by_name["p0"]
    assert served.exact[base.by_name["p1"].zone] is served.by_name["p1"]
    assert addresses(ask(served, "p1.example")) == ["10.0.1.1"]
    assert ask(served, "p2.example").rcode() == 2  # SERVFAIL: every endpoint down
    assert addresses(ask(base, "p1.example", rng=random.Random(3))) != []


def test_answer_counts_move_only_for_the_named_policies_and_end_with_them() -> None:
    first = compile_snapshot(_set(2))
    for _ in range(4):
        ask(first, "p0.example")
        ask(first, "p1.example")
    counts = AnswerCounts()
    second = compile_snapshot([_set(2)[0]], previous=first)  # p0 new object, p1 removed
    counts.retire(first, second, second.changed_since(first))
    totals = counts.totals(second)
    assert sum(v for (name, _, _), v in totals.items() if name == "p0") == 4
    assert not [key for key in totals if key[0] == "p1"]  # its series ended
    assert all(key[1] == DEFAULT_SLICE for key in totals)


def test_health_weighs_only_the_changed_policies_and_matches_a_full_decision() -> None:
    down: set[str] = {"10.0.0.1"}
    served = ServedSnapshot(down=lambda: frozenset(down))
    monitor = HealthMonitor(served, probing=False)
    policies = _set(3)
    first = compile_snapshot(policies)
    served.set_base(first, monitor.weigh(first))
    assert served.snapshot.by_name["p0"] is not first.by_name["p0"]  # re-weighed
    changed = [policies[0], policy("p1", "p1.example", [ep("10.0.0.1"), ep("10.7.0.2")])]
    second = compile_snapshot([*changed, policies[2]], previous=first)
    effective = monitor.weigh(second)
    full = decide_weights([*changed, policies[2]], {}, frozenset(down))
    assert effective.weights == full.weights and set(effective.weights) == {"p0", "p1"}
    served.set_base(second, effective)
    assert served.snapshot.by_name["p2"] is first.by_name["p2"]  # never touched
    assert addresses(ask(served.snapshot, "p1.example")) == ["10.7.0.2"]
    # Another down set: every policy is decided again.
    down.clear()
    third = compile_snapshot([*changed, policies[2]], previous=second)
    assert monitor.weigh(third) == Effective()


def test_parsed_files_reuse_the_policies_of_a_file_that_did_not_change(tmp_path: Path) -> None:
    doc = (
        "apiVersion: dnsmesh/v1\nkind: Policy\nmetadata: {{name: {0}}}\nspec:\n"
        "  domain: {0}.example\n  endpoints: [{{address: {1}}}]\n"
    )
    (tmp_path / "a.yaml").write_text(doc.format("a", "10.0.0.1"))
    (tmp_path / "b.yaml").write_text(doc.format("b", "10.0.0.2"))
    parsed = ParsedFiles()
    first = {s.policy.name: s.policy for s in load_policy_path(tmp_path, parsed)}
    (tmp_path / "b.yaml").write_text(doc.format("b", "10.0.0.22"))
    second = {s.policy.name: s.policy for s in load_policy_path(tmp_path, parsed)}
    assert second["a"] is first["a"]
    assert (
        second["b"] is not first["b"] and str(second["b"].spec.endpoints[0].address) == "10.0.0.22"
    )
    (tmp_path / "a.yaml").unlink()
    assert [s.policy.name for s in load_policy_path(tmp_path, parsed)] == ["b"]


def test_a_rewritten_file_keeps_the_policy_objects_of_its_unchanged_documents(
    tmp_path: Path,
) -> None:
    """One document edited in a file of several: the others are equal to what they were, so
    they stay the same objects (and keep their compiled form); the edited one is new, and
    one that moved to another position in the file is kept too."""

    def text(*docs: tuple[str, str]) -> str:
        return "---\n".join(
            f"apiVersion: dnsmesh/v1\nkind: Policy\nmetadata: {{name: {name}}}\n"
            f"spec: {{domain: {name}.example, endpoints: [{{address: {address}}}]}}\n"
            for name, address in docs
        )

    file = tmp_path / "all.yaml"
    file.write_text(text(("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3")))
    parsed = ParsedFiles()
    first = {s.policy.name: s for s in load_policy_path(file, parsed)}
    file.write_text(text(("c", "10.0.0.3"), ("a", "10.0.0.1"), ("b", "10.0.0.22")))
    second = {s.policy.name: s for s in load_policy_path(file, parsed)}
    assert second["a"].policy is first["a"].policy and second["a"].document == 2
    assert second["c"].policy is first["c"].policy and second["c"].document == 1
    assert second["b"].policy is not first["b"].policy
    assert str(second["b"].policy.spec.endpoints[0].address) == "10.0.0.22"
    compiled = compile_snapshot([s.policy for s in first.values()])
    again = compile_snapshot([s.policy for s in second.values()], previous=compiled)
    assert again.changed == {"b"}
