"""Per-slice resource limits: the token bucket's maths, the policy's answer when it is
empty, validation, and buckets that survive a snapshot swap."""

from __future__ import annotations

import random
from typing import Any

import dns.edns
import dns.message
import dns.rcode
import pytest

from agent.served import ServedSnapshot
from dnsmesh import dnswire
from dnsmesh.errors import PolicyError
from dnsmesh.policy import ResourceLimits, parse_policy
from dnsmesh.reweigh import Effective
from dnsmesh.slicelimit import SliceBucket, carry_buckets
from dnsmesh.snapshot import CompiledPolicy, compile_snapshot
from tests.support.policies import policy_doc


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_gives_its_burst_then_qps_and_never_more_than_the_burst() -> None:
    bucket = SliceBucket(ResourceLimits(qps=2, burst=3))
    assert [bucket.take(10.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(10.4) is False  # 0.8 of a token
    assert bucket.take(10.5) is True  # 1.0
    assert bucket.limited == 2
    # An idle hour refills the burst, not 7200 tokens.
    assert sum(bucket.take(3610.5) for _ in range(10)) == 3
    assert bucket.limited == 9


def test_a_clock_stepping_back_refills_nothing() -> None:
    bucket = SliceBucket(ResourceLimits(qps=1000, burst=1))
    assert bucket.take(50.0) and not bucket.take(40.0)
    assert not bucket.take(50.0)  # still the same instant as the last refill
    assert bucket.take(50.01)


def test_a_fractional_rate() -> None:
    bucket = SliceBucket(ResourceLimits(qps=0.5, burst=1))
    assert bucket.take(0.0) and not bucket.take(1.9) and bucket.take(2.0)


def test_adopt_keeps_state_and_clamps_to_a_smaller_burst() -> None:
    old = SliceBucket(ResourceLimits(qps=1, burst=10))
    old.take(5.0)
    old.limited = 4
    smaller = SliceBucket(ResourceLimits(qps=1, burst=2))
    smaller.adopt(old)
    assert (smaller.tokens, smaller.stamp, smaller.limited) == (2.0, 5.0, 4)
    larger = SliceBucket(ResourceLimits(qps=1, burst=50))
    larger.adopt(old)
    assert larger.tokens == 9.0  # a new burst is not a refill


def test_carry_buckets_by_key_leaves_a_shared_bucket_alone() -> None:
    shared = SliceBucket(ResourceLimits(qps=1, burst=5))
    old = SliceBucket(ResourceLimits(qps=1, burst=5))
    old.tokens = 0.0
    fresh = SliceBucket(ResourceLimits(qps=1, burst=5))
    other = SliceBucket(ResourceLimits(qps=1, burst=5))
    carry_buckets(
        [(("web", "a"), old), (("web", "s"), shared)],
        [(("web", "a"), fresh), (("web", "s"), shared), (("api", "a"), other)],
    )
    assert fresh.tokens == 0.0 and shared.tokens == 5.0 and other.tokens == 5.0


def _doc(limits: dict[str, Any] | None, **slice_fields: Any) -> dict[str, Any]:
    slice_: dict[str, Any] = {"id": "beta", "match": {"client_cidrs": ["10.8.0.0/16"]}}
    if limits is not None:
        slice_["resource_limits"] = limits
    slice_.update(slice_fields)
    return policy_doc("web", [{"address": "10.3.0.1"}], slices=[slice_])


@pytest.mark.parametrize(
    ("limits", "fields", "path"),
    [
        ({"qps": 0, "burst": 5}, {}, "spec.slices[0].resource_limits.qps"),
        ({"qps": -1, "burst": 5}, {}, "spec.slices[0].resource_limits.qps"),
        ({"qps": 5, "burst": 0}, {}, "spec.slices[0].resource_limits.burst"),
        ({"qps": 5}, {}, "spec.slices[0].resource_limits.burst"),
        ({"qps": 5, "burst": 5, "rate": 1}, {}, "spec.slices[0].resource_limits.rate"),
        ({"qps": 5, "burst": 5}, {"action": "refuse"}, "spec.slices[0].resource_limits"),
        (None, {"match": {}}, "spec.slices[0].match"),
        (None, {"match": {"ecs_cidrs": []}}, "spec.slices[0].match.ecs_cidrs"),
    ],
)
def test_bad_limits_and_matches_are_refused_naming_the_field(
    limits: dict[str, Any] | None, fields: dict[str, Any], path: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(_doc(limits, **fields))
    assert path in [e.path for e in caught.value.errors]


def test_an_unset_ecs_match_and_limit_stay_out_of_the_document() -> None:
    document = parse_policy(_doc(None)).to_document()
    assert document["spec"]["slices"] == [
        {"id": "beta", "match": {"client_cidrs": ["10.8.0.0/16"]}, "action": "answer"}
    ]


def _ask(policy: CompiledPolicy, client: str) -> dns.message.Message:
    query = dns.message.make_query("web.mesh.internal", "A", use_edns=0)
    return dns.message.from_wire(
        policy.respond(dnswire.parse_query(query.to_wire()), client, random.Random(1))
    )


def test_a_slice_over_its_limit_is_refused_with_ede_other_and_counted() -> None:
    policy = CompiledPolicy(parse_policy(_doc({"qps": 1, "burst": 2})))
    ((key, bucket),) = policy.buckets()
    assert key == ("web", "beta")
    bucket.clock = Clock()
    rcodes = [_ask(policy, "10.8.0.9").rcode() for _ in range(4)]
    assert rcodes == [dns.rcode.NOERROR] * 2 + [dns.rcode.REFUSED] * 2
    refused = _ask(policy, "10.8.0.9")
    (ede,) = [o for o in refused.options if isinstance(o, dns.edns.EDEOption)]
    assert ede.code == dns.edns.EDECode.OTHER and "slice beta" in (ede.text or "")
    assert bucket.limited == 3
    # Clients outside the slice are not limited by it.
    assert {_ask(policy, "10.1.0.1").rcode() for _ in range(10)} == {dns.rcode.NOERROR}


def test_a_snapshot_swap_does_not_refill_a_bucket() -> None:
    policy = parse_policy(_doc({"qps": 0.001, "burst": 3}))
    served = ServedSnapshot()
    served.set_base(compile_snapshot([policy], 1), Effective())
    compiled = served.snapshot.policies()[0]
    rcodes = [_ask(compiled, "10.8.0.9").rcode() for _ in range(3)]
    assert dns.rcode.REFUSED not in rcodes
    # A reload (a new compile of the same policy) and a health re-weigh: still empty.
    served.set_base(compile_snapshot([policy], 2), Effective())
    assert served.snapshot.policies()[0] is not compiled
    assert _ask(served.snapshot.policies()[0], "10.8.0.9").rcode() == dns.rcode.REFUSED
    served.set_weights(Effective(weights={"web": {"10.3.0.1": 1}}))
    assert _ask(served.snapshot.policies()[0], "10.8.0.9").rcode() == dns.rcode.REFUSED
    ((_, bucket),) = served.snapshot.buckets()
    assert bucket.limited == 2
