"""The quorum rule (dnsmesh.quorum): pure, with the votes, ages and current set passed in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dnsmesh.quorum import QuorumRule, Vote, down_set, evaluate, judge

RULE = QuorumRule(min_agents=2, fail_loss=0.5, recover_loss=0.2, stale_s=30.0)


def ejected(agent: str, age: float = 1.0) -> Vote:
    return Vote(agent, "ejected", 1.0, age)


def healthy(agent: str, loss: float = 0.0, age: float = 1.0) -> Vote:
    return Vote(agent, "healthy", loss, age)


def test_one_agent_alone_never_marks_an_address_down() -> None:
    verdict = judge("10.0.0.1", [ejected("a")], RULE, down=False)
    assert (verdict.voters, verdict.failing, verdict.down) == (1, 1, False)


def test_a_majority_of_at_least_min_agents_marks_it_down() -> None:
    assert judge("10.0.0.1", [ejected("a"), ejected("b")], RULE, down=False).down
    assert judge("10.0.0.1", [ejected("a"), ejected("b"), healthy("c")], RULE, down=False).down


def test_half_is_not_a_majority_to_go_down() -> None:
    votes = [ejected("a"), healthy("b")]
    assert not judge("10.0.0.1", votes, RULE, down=False).down


def test_min_agents_one_lets_a_single_reporter_decide() -> None:
    rule = QuorumRule(min_agents=1)
    assert judge("10.0.0.1", [ejected("a")], rule, down=False).down


def test_loss_at_the_threshold_counts_as_failing() -> None:
    votes = [healthy("a", loss=0.5), healthy("b", loss=0.6)]
    assert judge("10.0.0.1", votes, RULE, down=False).down
    votes = [healthy("a", loss=0.49), healthy("b", loss=0.6)]
    assert not judge("10.0.0.1", votes, RULE, down=False).down


def test_stale_and_unknown_reports_do_not_vote() -> None:
    votes = [ejected("a"), ejected("b", age=30.5), Vote("c", "unknown", 1.0, 1.0)]
    verdict = judge("10.0.0.1", votes, RULE, down=False)
    assert (verdict.voters, verdict.failing, verdict.down) == (1, 1, False)


def test_a_tie_keeps_a_down_address_down_and_a_healthy_majority_brings_it_up() -> None:
    assert judge("10.0.0.1", [ejected("a"), healthy("b")], RULE, down=True).down
    votes = [ejected("a"), healthy("b"), healthy("c")]
    assert not judge("10.0.0.1", votes, RULE, down=True).down


def test_loss_hysteresis_keeps_a_down_address_down_until_loss_falls_below_recover() -> None:
    lossy = [healthy("a", loss=0.3), healthy("b", loss=0.35)]
    assert not judge("10.0.0.1", lossy, RULE, down=False).down  # not bad enough to go down
    assert judge("10.0.0.1", lossy, RULE, down=True).down  # not good enough to come up
    better = [healthy("a", loss=0.2), healthy("b", loss=0.1)]
    assert not judge("10.0.0.1", better, RULE, down=True).down


def test_a_down_address_with_no_fresh_reports_comes_back_up() -> None:
    assert not judge("10.0.0.1", [ejected("a", age=31), ejected("b", age=40)], RULE, down=True).down
    assert not judge("10.0.0.1", [], RULE, down=True).down


def test_evaluate_covers_reported_and_currently_down_addresses() -> None:
    votes = {
        "10.0.0.1": [ejected("a"), ejected("b")],
        "10.0.0.2": [ejected("a"), healthy("b"), healthy("c")],
    }
    verdicts = evaluate(votes, {"10.0.0.3", "10.0.0.2"}, RULE)
    assert sorted(verdicts) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert down_set(verdicts) == {"10.0.0.1"}


def test_the_rule_rejects_nonsense_parameters() -> None:
    with pytest.raises(ValueError):
        QuorumRule(min_agents=0)
    with pytest.raises(ValueError):
        QuorumRule(fail_loss=0.2, recover_loss=0.5)
    with pytest.raises(ValueError):
        QuorumRule(stale_s=0)


_VOTES = st.lists(
    st.builds(
        Vote,
        agent_id=st.sampled_from("abcdefg"),
        state=st.sampled_from(["healthy", "ejected", "unknown"]),
        loss=st.floats(0.0, 1.0),
        age_s=st.floats(0.0, 60.0),
    ),
    max_size=12,
)


@given(_VOTES)
def test_evaluating_its_own_result_again_changes_nothing(votes: list[Vote]) -> None:
    """Idempotent: replicas re-evaluating the same reports agree with the stored set."""
    first = down_set(evaluate({"x": votes}, set(), RULE))
    second = down_set(evaluate({"x": votes}, first, RULE))
    assert first == second


@given(_VOTES)
def test_going_down_is_harder_than_staying_down(votes: list[Vote]) -> None:
    """Hysteresis: whatever would mark an address down also keeps it down."""
    if judge("x", votes, RULE, down=False).down:
        assert judge("x", votes, RULE, down=True).down
