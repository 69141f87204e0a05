"""Compile policies into an immutable snapshot that answers policy names from pre-encoded RRs.

Everything that does not depend on the query is done here, once per snapshot: names in wire
form, every A/AAAA and SOA record encoded, slices parsed, cumulative weights summed. Per
query, ``CompiledPolicy.respond`` picks records and joins header + question + RRs + OPT.

Each view also keeps what its candidates are made of (every endpoint it could answer, with
its configured and effective weight and its state) and makes them on first use, which is
the query log's writer thread (dnsmesh/querylog.py): the query path computes nothing for
them, and an agent without the log never pays for them at all (compiling stays as fast).

Each picker counts the answers it gives per endpoint in plain ints (``hits``), a list
increment per answer; ``CompiledPolicy.take_answered`` reads them out for the agent's
metrics (agent/answer_counts.py), which keeps them across snapshots.
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from dnsmesh.dnswire import (
    CLASS_IN,
    EDE_OTHER,
    EDE_PROHIBITED,
    FLAG_AA,
    FLAG_CD,
    FLAG_QR,
    FLAG_RA,
    FLAG_RD,
    HEADER,
    OPT_DO,
    OPT_PLAIN,
    RCODE_REFUSED,
    RCODE_SERVFAIL,
    TYPE_A,
    TYPE_AAAA,
    TYPE_SOA,
    Query,
    build_error,
    name_to_wire,
    record_a,
    record_soa_at_question,
)
from dnsmesh.policy import Cohort, Endpoint, Policy, SliceAction, Strategy, check_policy_set
from dnsmesh.rollout import Side, cohort_of, side_key, traffic_sides
from dnsmesh.selection import (
    WeightedTable,
    failover_members,
    pick_sticky,
    sticky_key,
)

# Per-client memo tables are cleared when they reach this size: a flood of distinct source
# addresses costs a re-parse each, never unbounded memory.
MEMO_LIMIT = 65536

_ANSWER_FLAGS = FLAG_QR | FLAG_AA | FLAG_RA
_ECHO = FLAG_RD | FLAG_CD
_pack_header = HEADER.pack

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Picker:
    """Chooses the answer records of one address family for one view of a policy, and
    counts how often each endpoint was answered: ``hits[i]`` for the endpoint
    ``owners[i]`` (an address may own several slots)."""

    __slots__ = ("hits", "owners")

    def __init__(self, owners: Sequence[str]) -> None:
        self.owners = tuple(owners)
        self.hits = [0] * len(self.owners)

    def choose(self, client: str, rng: random.Random) -> tuple[bytes, int]:
        """(the chosen RRs joined, how many) for this client."""
        raise NotImplementedError

    def take_answered(self) -> dict[str, int]:
        """Answers per endpoint address since the last call (the counts start again at 0)."""
        out: dict[str, int] = {}
        hits = self.hits
        for index, owner in enumerate(self.owners):
            if hits[index]:
                out[owner] = out.get(owner, 0) + hits[index]
                hits[index] = 0
        return out


class _Fixed(_Picker):
    """Only one possible answer (a single eligible endpoint)."""

    __slots__ = ("answer",)

    def __init__(self, rrs: bytes, count: int, owner: str) -> None:
        super().__init__((owner,))
        self.answer = (rrs, count)

    def choose(self, client: str, rng: random.Random) -> tuple[bytes, int]:
        self.hits[0] += 1
        return self.answer


class _WeightedOne(_Picker):
    """One record, weighted: one random() and one bisect per query."""

    __slots__ = ("rrs", "table")

    def __init__(self, rrs: Sequence[bytes], weights: Sequence[int], owners: Sequence[str]):
        super().__init__(owners)
        self.table = WeightedTable.build(weights)
        self.rrs = tuple((rr, 1) for rr in rrs)

    def choose(self, client: str, rng: random.Random) -> tuple[bytes, int]:
        index = self.table.pick(rng)
        self.hits[index] += 1
        return self.rrs[index]


# Up to this many weight units, a weighted pick indexes a table holding each answer `weight`
# times: exact, and an int() is cheaper than a bisect. Weights are usually small integers.
SLOT_TABLE_LIMIT = 4096


class _WeightedSlots(_Picker):
    """One record, weighted, by indexing a table with one slot per unit of weight."""

    __slots__ = ("slots", "total")

    def __init__(self, rrs: Sequence[bytes], weights: Sequence[int], owners: Sequence[str]):
        # Weights in lowest terms: 70/30 needs 10 slots, not 100, and the draw is the same.
        # (Three tables a slot long per policy view: with 10,000 policies of weights 70/30
        # they were 90 MiB of the agent's memory.)
        unit = math.gcd(*weights)
        counts = [weight // unit for weight in weights]
        # A hit counter per slot rather than per endpoint: no second table to index.
        super().__init__(
            [owner for owner, count in zip(owners, counts, strict=True) for _ in range(count)]
        )
        # One answer tuple per endpoint, which its slots all refer to.
        answers = [(rr, 1) for rr in rrs]
        self.slots = tuple(
            answer for answer, count in zip(answers, counts, strict=True) for _ in range(count)
        )
        self.total = len(self.slots)

    def choose(self, client: str, rng: random.Random) -> tuple[bytes, int]:
        # random() < 1, so the index is always below total.
        index = int(rng.random() * self.total)
        self.hits[index] += 1
        return self.slots[index]


class _WeightedMany(_Picker):
    """Several distinct records, drawn by weight without replacement."""

    __slots__ = ("count", "rrs", "table")

    def __init__(
        self, rrs: Sequence[bytes], weights: Sequence[int], count: int, owners: Sequence[str]
    ) -> None:
        super().__init__(owners)
        self.rrs = tuple(rrs)
        self.table = WeightedTable.build(weights)
        self.count = count

    def choose(self, client: str, rng: random.Random) -> tuple[bytes, int]:
        rrs = self.rrs
        hits = self.hits
        picked = self.table.pick_distinct(self.count, rng)
        for index in picked:
            hits[index] += 1
        return b"".join([rrs[i] for i in picked]), len(picked)


class _Sticky(_Picker):
    """Weighted rendezvous hashing on the client address, memoised per client."""

    __slots__ = ("count", "members", "memo", "rrs")

    def __init__(
        self,
        rrs: Sequence[bytes],
        members: Sequence[tuple[bytes, int]],
        count: int,
        owners: Sequence[str],
    ):
        super().__init__(owners)
        self.rrs = tuple(rrs)
        self.members = tuple(members)
        self.count = count
        # client -> (its answer, the endpoint indices in it)
        self.memo: dict[str, tuple[tuple[bytes, int], list[int]]] = {}

    def choose(self, client: str, rng: random.Random) -> tuple[bytes, int]:
        memoised = self.memo.get(client)
        if memoised is None:
            picked = pick_sticky(client, self.members, self.count)
            memoised = ((b"".join([self.rrs[i] for i in picked]), len(picked)), picked)
            if len(self.memo) >= MEMO_LIMIT:
                self.memo.clear()
            self.memo[client] = memoised
        hits = self.hits
        for index in memoised[1]:
            hits[index] += 1
        return memoised[0]


class _Split(_Picker):
    """A canary's or split's sides, each its own picker: the side by the client's cohort
    (weighted rendezvous over the shares, memoised per client) or by a draw per query."""

    __slots__ = ("keys", "memo", "pickers", "shares", "table")

    def __init__(
        self,
        pickers: Sequence[_Picker],
        shares: Sequence[int],
        keys: Sequence[bytes],
        by_client: bool,
    ) -> None:
        super().__init__(())
        self.pickers = tuple(pickers)
        self.shares = tuple(shares)
        self.keys = tuple(keys)
        self.table = WeightedTable.build(shares)
        # client -> its side's picker; None: a fresh draw per query (cohort random)
        self.memo: dict[str, _Picker] | None = {} if by_client else None

    def choose(self, client: str, rng: random.Random) -> tuple[bytes, int]:
        memo = self.memo
        if memo is None:
            return self.pickers[self.table.pick(rng)].choose(client, rng)
        picker = memo.get(client)
        if picker is None:
            picker = self.pickers[cohort_of(client, self.keys, self.shares)]
            if len(memo) >= MEMO_LIMIT:
                memo.clear()
            memo[client] = picker
        return picker.choose(client, rng)

    def take_answered(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for picker in self.pickers:
            for owner, count in picker.take_answered().items():
                out[owner] = out.get(owner, 0) + count
        return out


def _compile_sides(
    endpoints: Sequence[Endpoint],
    strategy: Strategy,
    count: int,
    ttl: int,
    sides: Sequence[Side],
    split: SplitSettings,
) -> _Picker | None:
    """One family's picker of a policy split into sides: each side picks by the strategy
    among its own endpoints; a side with none that can answer gives its share to the
    others, and when every side with a share has none, those without one answer."""
    compiled = [
        (side, _compile_picker([e for e in endpoints if side.holds(e)], strategy, count, ttl))
        for side in sides
    ]
    live = [(side, picker) for side, picker in compiled if picker is not None]
    sharing = [(side.share, side, picker) for side, picker in live if side.share > 0]
    if not sharing:
        sharing = [(1, side, picker) for side, picker in live]
    if not sharing:
        return None
    if len(sharing) == 1:
        return sharing[0][2]  # one side answers alone: its picker, nothing in between
    return _Split(
        [picker for _, _, picker in sharing],
        [share for share, _, _ in sharing],
        [side_key(split.policy, side.label) for _, side, _ in sharing],
        split.by_client,
    )


@dataclass(frozen=True, slots=True)
class SplitSettings:
    """How a policy's answers are split: its sides, and whether cohorts follow the client."""

    policy: str
    sides: tuple[Side, ...]
    by_client: bool


class CandidateState:
    """Why an endpoint is or is not in a view's draw (the query log's ``state``)."""

    ACTIVE: Final = "active"  # drawn from, by its effective weight
    STANDBY: Final = "standby"  # failover: a higher priority group is answering
    EJECTED: Final = "ejected"  # health set its weight to 0 (ejected here or down mesh-wide)
    DRAINED: Final = "drained"  # its configured weight is 0


class Candidate(NamedTuple):
    """One endpoint a view could answer, as the query log shows it."""

    address: str
    weight: int  # as configured in the policy
    effective_weight: int  # after health and latency (what the pick used)
    state: str  # a CandidateState


def _candidates(
    endpoints: Sequence[Endpoint], configured_endpoints: Sequence[Endpoint], strategy: Strategy
) -> tuple[Candidate, ...]:
    """The candidates of one family's (effective) endpoints, in policy order, with their state
    decided as ``_compile_picker`` decides who is drawn from."""
    configured = {e.address: e.weight for e in configured_endpoints}
    live = [e for e in endpoints if e.weight > 0]
    if strategy is Strategy.FAILOVER:
        members = failover_members([e.priority for e in live], [e.weight for e in live])
        live = [live[i] for i in members]
    drawn = {e.address for e in live}
    out = []
    for e in endpoints:
        weight = configured[e.address]
        if weight == 0:
            state = CandidateState.DRAINED
        elif e.weight == 0:
            state = CandidateState.EJECTED
        elif e.address in drawn:
            state = CandidateState.ACTIVE
        else:
            state = CandidateState.STANDBY
        out.append(Candidate(str(e.address), weight, e.weight, state))
    return tuple(out)


def _compile_picker(
    endpoints: Sequence[Endpoint], strategy: Strategy, count: int, ttl: int
) -> _Picker | None:
    """The picker for one family's endpoints, or None when none of them can be answered."""
    live = [e for e in endpoints if e.weight > 0]
    if strategy is Strategy.FAILOVER:
        members = failover_members([e.priority for e in live], [e.weight for e in live])
        live = [live[i] for i in members]
    if not live:
        return None
    rrs = [record_a(e.address, ttl) for e in live]
    weights = [e.weight for e in live]
    owners = [str(e.address) for e in live]
    if len(live) == 1:
        return _Fixed(rrs[0], 1, owners[0])
    if strategy is Strategy.STICKY:
        keyed = [(sticky_key(owner), e.weight) for owner, e in zip(owners, live, strict=True)]
        return _Sticky(rrs, keyed, count, owners)
    # weighted, failover (within its group) and, for now, latency-weighted.
    if count == 1:
        if sum(weights) <= SLOT_TABLE_LIMIT:
            return _WeightedSlots(rrs, weights, owners)
        return _WeightedOne(rrs, weights, owners)
    return _WeightedMany(rrs, weights, count, owners)


@dataclass(frozen=True, slots=True)
class View:
    """What one slice (or the default) answers: a picker per family, or a refusal; and what
    the candidates of each family are made of, for the query log (never read answering)."""

    v4: _Picker | None
    v6: _Picker | None
    refuse: bool = False
    slice: str | None = None  # the slice's id; None: the policy's default view
    # The view's endpoints of each family with their effective weights, the policy's as
    # configured, and its strategy: what ``candidates`` are made of.
    endpoints: tuple[tuple[Endpoint, ...], tuple[Endpoint, ...]] = ((), ())
    configured: Sequence[Endpoint] = ()
    strategy: Strategy = Strategy.WEIGHTED
    _made: dict[int, tuple[Candidate, ...]] = field(default_factory=dict, compare=False)

    def candidates(self, family: int) -> tuple[Candidate, ...]:
        """The candidates of family 4 or 6, made on first use. Only the query log's writer
        thread asks, so the memo has one writer."""
        made = self._made.get(family)
        if made is None:
            endpoints = self.endpoints[family == 6]
            made = self._made[family] = _candidates(endpoints, self.configured, self.strategy)
        return made


def _compile_view(
    endpoints: Sequence[Endpoint],
    configured: Sequence[Endpoint],
    groups: Sequence[str] | None,
    spec_strategy: Strategy,
    count: int,
    ttl: int,
    slice_id: str | None = None,
    split: SplitSettings | None = None,
) -> View:
    if groups is not None:
        wanted = set(groups)
        endpoints = [e for e in endpoints if e.group in wanted]
    v4 = [e for e in endpoints if e.address.version == 4]
    v6 = [e for e in endpoints if e.address.version == 6]
    if split is None:
        pickers = (
            _compile_picker(v4, spec_strategy, count, ttl),
            _compile_picker(v6, spec_strategy, count, ttl),
        )
    else:
        pickers = (
            _compile_sides(v4, spec_strategy, count, ttl, split.sides, split),
            _compile_sides(v6, spec_strategy, count, ttl, split.sides, split),
        )
    return View(
        pickers[0],
        pickers[1],
        slice=slice_id,
        endpoints=(tuple(v4), tuple(v6)),
        configured=configured,
        strategy=spec_strategy,
    )


# The label of the answers given by a policy's default view (no slice matched): not a valid
# slice id (those have no underscore), so it never names a slice.
DEFAULT_SLICE = "_default"


class CompiledPolicy:
    """One policy, ready to answer: ``respond`` builds the whole wire response."""

    __slots__ = (
        "_default",
        "_memo",
        "_slice_ids",
        "_slices",
        "_soa",
        "_ttl",
        "canary_share",
        "domain",
        "name",
        "policy",
        "revision",
        "wildcard",
        "zone",
    )

    def __init__(
        self,
        policy: Policy,
        revision: int = 0,
        weights: Mapping[str, int] | None = None,
        canary_share: int | None = None,
    ) -> None:
        """``canary_share``: the canary group's percent of the answers (the controller's
        rollout); None answers a canary policy by its weights as written."""
        spec = policy.spec
        endpoints = list(spec.endpoints)
        if weights:
            if any(w < 0 for w in weights.values()):
                raise ValueError(f"policy {policy.name!r}: weight overrides cannot be negative")
            # Effective weights from health/latency (0 = ejected); the policy itself is kept.
            endpoints = [
                e.model_copy(update={"weight": weights[str(e.address)]})
                if str(e.address) in weights
                else e
                for e in endpoints
            ]
        self.policy = policy
        self.canary_share = canary_share
        self.revision = revision  # the snapshot revision this was compiled for
        self.name = policy.name
        self.domain = spec.domain
        self.wildcard = spec.domain.startswith("*.")
        # The lookup key: the name itself, or the suffix a wildcard matches below.
        self.zone = name_to_wire(spec.domain[2:] if self.wildcard else spec.domain)
        self._ttl = spec.ttl
        # Every name the policy answers is its own apex: the SOA of a NODATA answer is owned
        # by the query name, and an SOA query there gets that same record. (A wildcard's
        # suffix is not served by the agent, so an SOA there would point at a name that is
        # answered by someone else.)
        self._soa = record_soa_at_question(spec.ttl, spec.ttl, serial=revision)
        strategy = spec.strategy
        configured = spec.endpoints
        sides = traffic_sides(spec, canary_share)
        split = (
            None
            if sides is None
            else SplitSettings(policy.name, sides, spec.cohort is Cohort.CLIENT)
        )
        self._default = _compile_view(
            endpoints, configured, None, strategy, spec.answers, spec.ttl, None, split
        )
        slices: list[tuple[tuple[Network, ...], View]] = []
        self._slice_ids = tuple(slice_.id for slice_ in spec.slices)
        for slice_ in spec.slices:
            if slice_.action is SliceAction.REFUSE:
                view = View(None, None, refuse=True, slice=slice_.id)
            else:
                view = _compile_view(
                    endpoints,
                    configured,
                    slice_.groups,
                    strategy,
                    spec.answers,
                    spec.ttl,
                    slice_.id,
                    split,
                )
            slices.append((tuple(slice_.match.client_cidrs), view))
        self._slices = tuple(slices)
        self._memo: dict[str, View] = {}

    def __repr__(self) -> str:
        return f"CompiledPolicy({self.name!r}, {self.domain!r})"

    def take_answered(self) -> dict[tuple[str, str], int]:
        """Answers per (slice id or DEFAULT_SLICE, endpoint address) since the last call."""
        out: dict[tuple[str, str], int] = {}
        views = [(DEFAULT_SLICE, self._default)]
        views += [(id_, view) for id_, (_, view) in zip(self._slice_ids, self._slices, strict=True)]
        for slice_id, view in views:
            for picker in (view.v4, view.v6):
                if picker is not None:
                    for address, count in picker.take_answered().items():
                        out[slice_id, address] = count
        return out

    def view_for(self, client: str) -> View:
        """The first slice whose client_cidrs contain ``client``, else the default view.

        Memoised per client string: parsing an address and testing networks costs
        microseconds, a dict hit tens of nanoseconds. An unparseable client matches no slice.
        """
        if not self._slices:
            return self._default
        view = self._memo.get(client)
        if view is None:
            view = self._match(client)
            memo = self._memo
            if len(memo) >= MEMO_LIMIT:
                memo.clear()
            memo[client] = view
        return view

    def view_of(self, client: str) -> View:
        """The view ``view_for`` gives ``client``, reading its memo but never writing it: the
        query log's writer thread asks this of a policy that answered, and the memo (its
        clearing included) is the loop's."""
        if not self._slices:
            return self._default
        return self._memo.get(client) or self._match(client)

    def _match(self, client: str) -> View:
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return self._default
        candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)  # a v4 client on a dual-stack socket
        for networks, view in self._slices:
            for network in networks:
                for candidate in candidates:
                    if candidate in network:
                        return view
        return self._default

    def respond(self, query: Query, client: str, rng: random.Random) -> bytes:
        """The whole wire response to ``query`` (whose qname this policy matched) from ``client``.

        A/AAAA: records of that family picked per the strategy; any other type, or a family
        with no endpoints: NOERROR/NODATA with the synthesised SOA (RFC 2308 §2.2), never
        NXDOMAIN, since the name exists. A class other than IN is REFUSED: we hold data only
        for IN. A slice with action refuse answers REFUSED with EDE 18 (RFC 8914 §4.19).
        """
        msg_id, query_flags, _qname, question, qtype, qclass, payload, dnssec_ok, _limit = query
        if qclass != CLASS_IN:
            return build_error(query, RCODE_REFUSED)
        if self._slices:
            view = self.view_for(client)
            if view.refuse:
                return build_error(query, RCODE_REFUSED, ede=(EDE_PROHIBITED, ""))
        else:
            view = self._default
        if qtype == TYPE_A:
            picker = view.v4
        elif qtype == TYPE_AAAA:
            picker = view.v6
        else:
            picker = None
        flags = _ANSWER_FLAGS | (query_flags & _ECHO)
        if payload is None:
            opt = b""
            arcount = 0
        else:
            opt = OPT_DO if dnssec_ok else OPT_PLAIN
            arcount = 1
        if picker is None:
            if qtype == TYPE_SOA:
                header = _pack_header(msg_id, flags, 1, 1, 0, arcount)
            else:
                header = _pack_header(msg_id, flags, 1, 0, 1, arcount)
            return b"".join((header, question, self._soa, opt))
        rrs, count = picker.choose(client, rng)
        return b"".join((_pack_header(msg_id, flags, 1, count, 0, arcount), question, rrs, opt))


class ServfailPolicy(CompiledPolicy):
    """A policy answering SERVFAIL to A and AAAA: every endpoint in service is down and its
    ``spec.health.on_all_down`` is ``servfail``. Swapped in by dnsmesh.reweigh while that
    lasts, so the query path of every other policy pays nothing for the choice."""

    __slots__ = ("_ede",)

    def __init__(self, policy: Policy, revision: int = 0, canary_share: int | None = None) -> None:
        super().__init__(policy, revision, None, canary_share)
        # EDE 0 with a reason: none of RFC 8914's codes says "the service is down".
        self._ede = (EDE_OTHER, f"every endpoint of policy {policy.name} is down")

    def respond(self, query: Query, client: str, rng: random.Random) -> bytes:
        if query.qtype not in (TYPE_A, TYPE_AAAA) or query.qclass != CLASS_IN:
            return super().respond(query, client, rng)  # NODATA, REFUSED as always
        if self._slices and self.view_for(client).refuse:
            return build_error(query, RCODE_REFUSED, ede=(EDE_PROHIBITED, ""))
        return build_error(query, RCODE_SERVFAIL, ede=self._ede)


def _at_label_start(qname: bytes, offset: int) -> bool:
    """Whether ``offset`` starts a label of ``qname`` (and not the inside of one)."""
    pos = 0
    while pos < offset:
        pos += qname[pos] + 1
    return pos == offset


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every policy of one revision, indexed by wire name for exact and wildcard lookup."""

    revision: int
    exact: Mapping[bytes, CompiledPolicy] = field(default_factory=dict)
    # keyed by the wildcard's suffix in wire form ("*.a.b" -> b"\x01a\x01b\x00")
    wildcards: Mapping[bytes, CompiledPolicy] = field(default_factory=dict)
    # the distinct lengths of those keys, longest first: a miss costs one slice and one dict
    # probe per length rather than one per label of the name
    wildcard_lengths: tuple[int, ...] = ()

    def lookup(self, qname: bytes) -> CompiledPolicy | None:
        """Exact name first, then the longest '*.suffix' wildcard with the name strictly below.

        ``qname`` is lower-cased wire format (``Query.qname``).
        """
        hit = self.exact.get(qname)
        if hit is not None or not self.wildcard_lengths:
            return hit
        size = len(qname)
        wildcards = self.wildcards
        for length in self.wildcard_lengths:
            if length < size:
                hit = wildcards.get(qname[size - length :])
                # A byte suffix can also end inside a label (a label holding "\x03svc...");
                # only a suffix on a label boundary is a parent name.
                if hit is not None and _at_label_start(qname, size - length):
                    return hit
        return None

    def __len__(self) -> int:
        return len(self.exact) + len(self.wildcards)

    def policies(self) -> list[CompiledPolicy]:
        return [*self.exact.values(), *self.wildcards.values()]


def compile_snapshot(
    policies: Sequence[Policy],
    revision: int = 0,
    *,
    weights: Mapping[str, Mapping[str, int]] | None = None,
    canary_shares: Mapping[str, int] | None = None,
) -> Snapshot:
    """Compile a validated policy set; raises PolicyError if names or domains repeat.

    ``weights`` optionally overrides endpoint weights per policy name and address text
    (``{"checkout": {"10.0.1.10": 0}}``): what health checks and latency scoring decide.
    Deciding them (and keeping within max_ejection_percent) is the caller's job; an endpoint
    at weight 0 is never answered, and a family left with none answers NODATA.

    ``canary_shares``: the canary group's percent of the answers per policy name (the
    controller's rollouts); a canary policy not named answers by its weights as written.
    """
    check_policy_set(list(policies))
    exact: dict[bytes, CompiledPolicy] = {}
    wildcards: dict[bytes, CompiledPolicy] = {}
    overrides = weights or {}
    shares = canary_shares or {}
    for policy in policies:
        share = shares.get(policy.name)
        compiled = CompiledPolicy(policy, revision, overrides.get(policy.name), share)
        if compiled.wildcard:
            wildcards[compiled.zone] = compiled
        else:
            exact[compiled.zone] = compiled
    lengths = tuple(sorted({len(key) for key in wildcards}, reverse=True))
    return Snapshot(revision, exact, wildcards, lengths)
