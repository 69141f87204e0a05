"""Selection: weighted, failover and sticky picks, checked statistically with seeded RNGs.

Bounds: with n = 20 000 picks the standard deviation of an observed share is at most
sqrt(0.25 / 20 000) = 0.35 percentage points, so a 2-point tolerance is over 5 sigma: a
correct implementation does not fail, a wrong weighting (off by more than 2 points) does.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsmesh.selection import (
    WeightedTable,
    failover_members,
    pick_sticky,
    rendezvous_score,
    sticky_key,
)

N = 20_000
TOLERANCE = 0.02


def shares(counts: Counter[int], total: int, size: int) -> list[float]:
    return [counts[i] / total for i in range(size)]


def assert_split(counts: Counter[int], weights: list[int]) -> None:
    total_weight = sum(weights)
    observed = shares(counts, sum(counts.values()), len(weights))
    for index, weight in enumerate(weights):
        expected = weight / total_weight
        assert abs(observed[index] - expected) <= TOLERANCE, (index, observed, weights)
        if weight == 0:
            assert counts[index] == 0


@pytest.mark.parametrize("weights", [[70, 20, 10, 0], [1, 1], [0, 5, 0, 5, 90], [3]])
def test_weighted_table_split(weights: list[int]) -> None:
    table = WeightedTable.build(weights)
    rng = random.Random(1234)
    counts = Counter(table.pick(rng) for _ in range(N))
    assert_split(counts, weights)


def test_weighted_table_rejects_unusable_weights() -> None:
    with pytest.raises(ValueError):
        WeightedTable.build([0, 0])
    with pytest.raises(ValueError):
        WeightedTable.build([])
    with pytest.raises(ValueError):
        WeightedTable.build([1, -1])


def test_weighted_table_edge_of_random_stays_in_range() -> None:
    class Top(random.Random):
        def random(self) -> float:
            return 1.0 - 2**-53

    table = WeightedTable.build([1_000_000] * 1024)
    assert table.pick(Top()) == 1023
    assert WeightedTable.build([5, 0]).pick(Top()) == 0


def pick_weighted(weights: list[int], count: int, rng: random.Random) -> list[int]:
    """What the snapshot's many-record picker draws: distinct, by weight (and, as the
    snapshot compiles no picker for endpoints that all weigh 0, nothing from those)."""
    if not any(w > 0 for w in weights):
        return []
    return WeightedTable.build(weights).pick_distinct(count, rng)


def pick_failover(
    priorities: list[int], weights: list[int], count: int, rng: random.Random
) -> list[int]:
    """What the snapshot's failover picker draws: by weight among the lowest priority only."""
    members = failover_members(priorities, weights)
    picked = pick_weighted([weights[i] for i in members], count, rng)
    return [members[i] for i in picked]


def test_pick_weighted_single_split() -> None:
    weights = [50, 30, 20, 0]
    rng = random.Random(99)
    counts = Counter(pick_weighted(weights, 1, rng)[0] for _ in range(N))
    assert_split(counts, weights)


def test_pick_weighted_many_is_distinct_and_weighted_first() -> None:
    weights = [60, 30, 10, 0]
    rng = random.Random(7)
    firsts: Counter[int] = Counter()
    for _ in range(N):
        picked = pick_weighted(weights, 2, rng)
        assert len(picked) == 2 and len(set(picked)) == 2
        assert 3 not in picked
        firsts[picked[0]] += 1
    assert_split(firsts, weights)


def test_pick_weighted_second_pick_follows_remaining_weights() -> None:
    # Given the first pick was 0 (weight 60), the second is 1 with 30/40 = 75 %.
    weights = [60, 30, 10]
    rng = random.Random(8)
    seconds: Counter[int] = Counter()
    for _ in range(N * 2):
        first, second = pick_weighted(weights, 2, rng)
        if first == 0:
            seconds[second] += 1
    total = sum(seconds.values())
    assert abs(seconds[1] / total - 0.75) <= TOLERANCE


def test_pick_weighted_fewer_than_asked() -> None:
    rng = random.Random(1)
    assert sorted(pick_weighted([1, 0, 2], 5, rng)) == [0, 2]
    # Nothing to pick from is refused when the table is built (tested above), so a picker
    # is never compiled for it.


def test_failover_members_lowest_live_priority() -> None:
    assert failover_members([0, 0, 1], [1, 3, 5]) == [0, 1]
    # the whole priority-0 group is at weight 0: the next group takes over
    assert failover_members([0, 1, 1, 2], [0, 1, 1, 9]) == [1, 2]
    assert failover_members([5], [0]) == []


def test_pick_failover_weighted_within_group_only() -> None:
    priorities = [1, 1, 2, 0]
    weights = [1, 3, 50, 0]
    rng = random.Random(5)
    counts = Counter(pick_failover(priorities, weights, 1, rng)[0] for _ in range(N))
    assert set(counts) == {0, 1}
    assert abs(counts[1] / N - 0.75) <= TOLERANCE
    # never fills up with backups
    assert sorted(pick_failover(priorities, weights, 3, rng)) == [0, 1]


def _endpoints(weights: dict[str, int]) -> list[tuple[bytes, int]]:
    return [(sticky_key(address), weight) for address, weight in weights.items()]


def _clients(count: int) -> list[str]:
    return [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(count)]


def test_sticky_is_deterministic() -> None:
    endpoints = _endpoints({"10.0.0.1": 1, "10.0.0.2": 1, "10.0.0.3": 1})
    for client in _clients(200):
        assert pick_sticky(client, endpoints, 1) == pick_sticky(client, endpoints, 1)


def test_sticky_spreads_clients_by_weight() -> None:
    weights = {"10.0.0.1": 10, "10.0.0.2": 20, "10.0.0.3": 30, "10.0.0.4": 40, "10.0.0.5": 0}
    endpoints = _endpoints(weights)
    counts = Counter(pick_sticky(client, endpoints, 1)[0] for client in _clients(N))
    assert_split(counts, list(weights.values()))


def test_sticky_removal_moves_only_the_removed_endpoints_clients() -> None:
    weights = {"10.0.0.1": 1, "10.0.0.2": 2, "10.0.0.3": 3, "10.0.0.4": 4}
    before = _endpoints(weights)
    removed = "10.0.0.3"
    after = _endpoints({a: w for a, w in weights.items() if a != removed})
    names_before = list(weights)
    names_after = [a for a in weights if a != removed]
    moved = 0
    for client in _clients(5000):
        old = names_before[pick_sticky(client, before, 1)[0]]
        new = names_after[pick_sticky(client, after, 1)[0]]
        if old != removed:
            assert new == old, client
        else:
            moved += 1
    assert moved > 0


def test_sticky_addition_moves_clients_only_to_the_new_endpoint() -> None:
    weights = {"10.0.0.1": 1, "10.0.0.2": 1}
    before = _endpoints(weights)
    after = _endpoints({**weights, "10.0.0.9": 1})
    names_after = [*weights, "10.0.0.9"]
    gained = 0
    for client in _clients(3000):
        old = list(weights)[pick_sticky(client, before, 1)[0]]
        new = names_after[pick_sticky(client, after, 1)[0]]
        if new != old:
            assert new == "10.0.0.9"
            gained += 1
    assert abs(gained / 3000 - 1 / 3) <= 0.05


def test_sticky_many_is_distinct_and_skips_zero_weight() -> None:
    endpoints = _endpoints({"10.0.0.1": 1, "10.0.0.2": 0, "10.0.0.3": 5, "10.0.0.4": 2})
    for client in _clients(300):
        picked = pick_sticky(client, endpoints, 2)
        assert len(set(picked)) == 2 and 1 not in picked
    assert sorted(pick_sticky("10.1.1.1", endpoints, 10)) == [0, 2, 3]


def test_sticky_accepts_any_client_text() -> None:
    endpoints = _endpoints({"10.0.0.1": 1, "10.0.0.2": 1})
    assert pick_sticky("fe80::1%eth0", endpoints, 1) in ([0], [1])
    assert pick_sticky("\udcff not an address", endpoints, 1) in ([0], [1])


def test_rendezvous_score_is_positive_and_finite() -> None:
    for i in range(2000):
        score = rendezvous_score(str(i).encode(), b"k", 1)
        assert 0 < score < float("inf")


weights_lists = st.lists(st.integers(0, 1_000_000), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None, database=None)
@given(weights=weights_lists, count=st.integers(1, 50), seed=st.integers(0, 2**32))
def test_pick_weighted_properties(weights: list[int], count: int, seed: int) -> None:
    picked = pick_weighted(weights, count, random.Random(seed))
    live = [i for i, w in enumerate(weights) if w > 0]
    assert len(picked) == min(count, len(live))
    assert len(set(picked)) == len(picked)
    assert all(weights[i] > 0 for i in picked)


@settings(max_examples=150, deadline=None, database=None)
@given(
    weights=st.lists(st.integers(0, 100), min_size=2, max_size=12),
    removed=st.integers(0, 11),
    count=st.integers(1, 3),
)
def test_sticky_removal_property(weights: list[int], removed: int, count: int) -> None:
    removed %= len(weights)
    names = [f"10.0.0.{i}" for i in range(len(weights))]
    before = [(sticky_key(n), w) for n, w in zip(names, weights, strict=True)]
    after = [pair for i, pair in enumerate(before) if i != removed]
    kept_names = [n for i, n in enumerate(names) if i != removed]
    for client in _clients(60):
        old = [names[i] for i in pick_sticky(client, before, count)]
        new = [kept_names[i] for i in pick_sticky(client, after, count)]
        assert all(weights[names.index(n)] > 0 for n in old)
        # the survivors keep their relative order; only the removed one leaves
        assert [n for n in old if n != names[removed]] == new[: len(old) - (names[removed] in old)]


def test_sticky_hash_is_pinned_across_processes_and_releases() -> None:
    # blake2b, not hash(): the same client keeps its endpoint after an agent restart or
    # upgrade. A change here moves every sticky client at once; do it only on purpose.
    endpoints = [(sticky_key(f"10.0.0.{i}"), 1) for i in range(1, 6)]
    picks = [pick_sticky(f"192.0.2.{c}", endpoints, 2) for c in range(1, 9)]
    assert picks == [[2, 1], [0, 1], [1, 4], [3, 1], [2, 3], [3, 2], [1, 0], [4, 3]]
