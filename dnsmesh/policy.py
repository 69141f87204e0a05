"""The policy schema: what an operator writes, defined once for YAML, REST and the wire.

Validation is strict (unknown fields are errors) because a typo in a traffic policy
should be refused, not silently ignored. ``parse_policy`` turns pydantic's errors into
``PolicyError`` with dotted field paths, so every edge reports the same way.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

import idna
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from dnsmesh.errors import FieldError, PolicyError
from dnsmesh.specialuse import special_use_zone

API_VERSION = "dnsmesh/v1"
KIND = "Policy"

# RFC 1035 §2.3.4: 63 octets a label, 255 octets a wire name, so 253 characters of text.
_MAX_LABEL = 63
_MAX_NAME = 253
# Letters, digits, hyphen; underscore too, for service labels such as _http._tcp (RFC 2782).
_LABEL_RE = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?$")
# Kubernetes-style object names (RFC 1123 label): they appear in URLs and file names.
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class Strategy(StrEnum):
    WEIGHTED = "weighted"
    LATENCY_WEIGHTED = "latency-weighted"
    FAILOVER = "failover"
    STICKY = "sticky"


class ProbeType(StrEnum):
    ICMP = "icmp"
    TCP = "tcp"
    HTTP = "http"


class SliceAction(StrEnum):
    ANSWER = "answer"
    REFUSE = "refuse"


def parse_duration(value: object) -> float:
    """'250ms', '5s', '10m', '1h' or a number of seconds -> seconds as a float."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string such as '5s'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration such as '250ms', '5s', '10m' or '1h'")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    else:
        raise ValueError("a duration is a number of seconds or a string such as '5s'")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact text for a duration, so documents round-trip unchanged."""
    millis = round(seconds * 1000)
    if millis % 3_600_000 == 0 and millis:
        return f"{millis // 3_600_000}h"
    if millis % 60_000 == 0 and millis:
        return f"{millis // 60_000}m"
    if millis % 1000 == 0:
        return f"{millis // 1000}s"
    return f"{millis}ms"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]


def normalize_domain(value: str) -> str:
    """Lower-case, IDNA-encoded, without the trailing dot; a leading '*.' marks a wildcard."""
    text = value.strip().rstrip(".")
    if not text:
        raise ValueError("a domain is required")
    wildcard = text.startswith("*.")
    labels = text[2:].split(".") if wildcard else text.split(".")
    out: list[str] = []
    for label in labels:
        if not label:
            raise ValueError(f"{value!r} has an empty label")
        if "*" in label:
            raise ValueError("'*' is allowed only as the whole first label ('*.example.com')")
        if label.isascii():
            ascii_label = label.lower()
        else:
            try:
                ascii_label = idna.encode(label, uts46=True).decode("ascii")
            except idna.IDNAError as exc:
                raise ValueError(f"label {label!r} is not a valid IDNA name: {exc}") from exc
        if len(ascii_label) > _MAX_LABEL:
            raise ValueError(f"label {ascii_label!r} is longer than {_MAX_LABEL} characters")
        if not _LABEL_RE.match(ascii_label):
            raise ValueError(
                f"label {ascii_label!r} may hold only letters, digits, '-' and '_', "
                "and may not start or end with '-'"
            )
        out.append(ascii_label)
    if wildcard and not out:
        raise ValueError("a wildcard needs a suffix ('*.example.com')")
    name = ("*." if wildcard else "") + ".".join(out)
    if len(name) > _MAX_NAME:
        raise ValueError(f"the domain is longer than {_MAX_NAME} characters")
    return name


def _parse_address(value: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    try:
        return ipaddress.ip_address(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None


def _parse_network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    try:
        return ipaddress.ip_network(str(value))
    except ValueError as exc:
        # ip_network's own text says what is wrong ("... has host bits set")
        raise ValueError(f"{value!r} is not a network in CIDR form: {exc}") from None


# Parsed by hand rather than as a pydantic union so that a bad value gets one clear message.
IPAddress = Annotated[
    ipaddress.IPv4Address | ipaddress.IPv6Address,
    PlainValidator(_parse_address),
    PlainSerializer(str, return_type=str),
]
IPNetwork = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network,
    PlainValidator(_parse_network),
    PlainSerializer(str, return_type=str),
]
_GROUP_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,62})$"
_GROUP_RE = re.compile(_GROUP_PATTERN)
GroupName = Annotated[str, Field(pattern=_GROUP_PATTERN)]

# Labels, of a policy and of an agent: at most MAX_LABELS, a key of 1-63 characters, a
# value of at most 63. No control characters in a value: NUL cannot be stored (PostgreSQL)
# or shown, nor can the rest be shown safely in a listing or a log line.
MAX_LABELS = 64
LabelKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,62})$")]
LabelValue = Annotated[str, Field(max_length=63, pattern=r"^[^\x00-\x1f\x7f]*$")]
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=MAX_LABELS)]


Location = tuple[str | int, ...]


def consistency_error(title: str, problems: list[tuple[Location, str]]) -> ValidationError:
    """A rule across fields, reported at the field it names (``spec.slices[2].groups``) rather
    than at the model that checked it, and every broken rule at once."""
    return ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(
                type=PydanticCustomError("consistency", "{reason}", {"reason": reason}),
                loc=loc,
                input=None,
            )
            for loc, reason in problems
        ],
    )


# One set object per distinct set of field names given, shared by every model instance
# given those (see _Strict); bounded, in case documents vary without end.
_FIELDS_SETS: dict[frozenset[str], set[str]] = {}
_FIELDS_SETS_MAX = 4096


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _share_fields_set(self) -> Self:
        """Each instance's ``__pydantic_fields_set__`` (the fields its document gave) is a
        set of its own, 216 bytes: a third of a policy's memory (five models, 3.1 KB). They
        are shared instead: frozen models never change theirs, and ``model_copy`` copies
        the set before it adds to it."""
        given = self.__pydantic_fields_set__
        names = frozenset(given)
        shared = _FIELDS_SETS.get(names)
        if shared is None:
            if len(_FIELDS_SETS) >= _FIELDS_SETS_MAX:
                return self
            shared = _FIELDS_SETS.setdefault(names, given)
        object.__setattr__(self, "__pydantic_fields_set__", shared)
        return self


class Endpoint(_Strict):
    address: IPAddress
    weight: int = Field(default=1, ge=0, le=1_000_000)
    priority: int = Field(default=0, ge=0, le=1000, description="failover: lowest first")
    group: GroupName | None = None


class Probe(_Strict):
    type: ProbeType
    port: int | None = Field(default=None, ge=1, le=65535)
    path: str = Field(default="/", pattern=r"^/")
    expect_status: Literal["1xx", "2xx", "3xx", "4xx", "5xx"] = "2xx"
    interval: Duration = 5.0
    timeout: Duration = 1.0

    @model_validator(mode="after")
    def _port_fits_type(self) -> Probe:
        problems: list[tuple[Location, str]] = []
        if self.type is ProbeType.TCP and self.port is None:
            problems.append((("port",), "a tcp probe needs a port"))
        if self.type is ProbeType.ICMP and self.port is not None:
            problems.append((("port",), "an icmp probe takes no port"))
        for name in ("interval", "timeout"):
            if getattr(self, name) <= 0:
                problems.append(((name,), "must be longer than 0"))
        if problems:
            raise consistency_error(type(self).__name__, problems)
        return self


class Outlier(_Strict):
    # The old name of ``spec.health.fall``, still accepted (one of the two, not both).
    consecutive_failures: int | None = Field(default=None, ge=1, le=1000)
    base_ejection: Duration = 30.0
    max_ejection_percent: int = Field(default=50, ge=0, le=100)


class OnAllDown(StrEnum):
    """What a policy answers when every endpoint in service is unhealthy."""

    FAIL_OPEN = "fail-open"  # its configured endpoints, as if all were healthy
    SERVFAIL = "servfail"
    NODATA = "nodata"


@dataclass(frozen=True, slots=True)
class FallbackGroup:
    """``{fallback_group: NAME}``: answer the endpoints of that group of the same policy."""

    group: str


_ALL_DOWN_CHOICES = "'fail-open', 'servfail', 'nodata' or {fallback_group: NAME}"


def _parse_on_all_down(value: object) -> OnAllDown | FallbackGroup:
    """Parsed by hand: a pydantic union of a string and a mapping reports both branches'
    errors at made-up paths; this names the one field and what it may be."""
    if isinstance(value, OnAllDown | FallbackGroup):
        return value
    if isinstance(value, str):
        try:
            return OnAllDown(value)
        except ValueError:
            raise ValueError(f"{value!r} is not one of {_ALL_DOWN_CHOICES}") from None
    if isinstance(value, dict) and set(value) == {"fallback_group"}:
        group = value["fallback_group"]
        if isinstance(group, str) and _GROUP_RE.match(group):
            return FallbackGroup(group)
        raise ValueError(f"fallback_group {group!r} is not a group name")
    raise ValueError(f"must be {_ALL_DOWN_CHOICES}")


def _dump_on_all_down(value: OnAllDown | FallbackGroup) -> str | dict[str, str]:
    return value.value if isinstance(value, OnAllDown) else {"fallback_group": value.group}


AllDownAnswer = Annotated[
    OnAllDown | FallbackGroup,
    PlainValidator(_parse_on_all_down),
    PlainSerializer(_dump_on_all_down),
]

# At most an hour: a longer ramp keeps a recovered endpoint short of its share for longer
# than any warm-up needs.
SlowStartWindow = Annotated[Duration, Field(ge=0, le=3600)]

DEFAULT_FALL = 5  # Envoy's consecutive_5xx default
DEFAULT_RISE = 1  # what the agent did before rise existed: the first success after ejection


class Health(_Strict):
    probe: Probe | None = None
    # Anti-flap (gdnsd's up/down thresholds, PowerDNS's minimumFailures): down after
    # ``fall`` consecutive failed probes, back after ``rise`` consecutive successes.
    # Unset fields stay unset, so a stored document reads back as it was written.
    fall: int | None = Field(default=None, ge=1, le=1000)
    rise: int | None = Field(default=None, ge=1, le=1000)
    outlier: Outlier = Field(default_factory=Outlier)
    on_all_down: AllDownAnswer | None = None
    # Coordinated probing (dnsmesh.probing): how many agents probe each endpoint; 0: every
    # agent; unset: the controller's --probes-per-endpoint.
    probes_per_endpoint: int | None = Field(default=None, ge=0, le=1000)
    # Slow start (Envoy's slow_start_config, dnsmesh.slowstart): an endpoint added to the
    # policy or back in service ramps to its weight over this long; unset or 0: off.
    slow_start: SlowStartWindow | None = None

    @model_validator(mode="after")
    def _one_name_for_fall(self) -> Health:
        if self.fall is not None and self.outlier.consecutive_failures is not None:
            raise consistency_error(
                type(self).__name__,
                [
                    (
                        ("outlier", "consecutive_failures"),
                        "is the old name of spec.health.fall: give one of them",
                    )
                ],
            )
        return self

    @property
    def failures_to_eject(self) -> int:
        """``fall``, or its old name ``outlier.consecutive_failures``, or the default."""
        if self.fall is not None:
            return self.fall
        if self.outlier.consecutive_failures is not None:
            return self.outlier.consecutive_failures
        return DEFAULT_FALL

    @property
    def successes_to_return(self) -> int:
        return DEFAULT_RISE if self.rise is None else self.rise

    @property
    def all_down(self) -> OnAllDown | FallbackGroup:
        return OnAllDown.FAIL_OPEN if self.on_all_down is None else self.on_all_down

    @property
    def slow_start_window(self) -> float:
        """``slow_start`` in seconds, 0 when unset (off)."""
        return 0.0 if self.slow_start is None else self.slow_start


class Safety(_Strict):
    """Assertion rules (as Route 53 ARC's): what drains, ejections and the quorum's down set
    must leave in service. Counted over the endpoints whose configured weight is above 0."""

    min_endpoints: int = Field(default=1, ge=0, le=1024)
    min_weight_percent: int = Field(default=0, ge=0, le=100)


class Unmatched(StrEnum):
    """What a policy with slices answers a query that no slice matches."""

    DEFAULT = "default"  # the policy's default view (every endpoint)
    REFUSE = "refuse"  # REFUSED with EDE 18, as a slice with action refuse answers


# A debug label is one DNS label, written as it is asked (lower case): it is put in front
# of the policy's domain (``beta.checkout.mesh.internal``).
_DEBUG_LABEL_PATTERN = r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$"


class SliceMatch(_Strict):
    """Who a slice is for. Each criterion given must hold; at least one is needed (a match
    of nothing would silently catch every client)."""

    client_cidrs: list[IPNetwork] | None = Field(default=None, min_length=1)
    # Every one must equal a --label of the agent answering (decided when it compiles).
    node_labels: Labels | None = Field(default=None, min_length=1)
    # The query asks for DEBUG_LABEL.<domain> (debug routing: try a slice by name).
    debug_label: Annotated[str, Field(pattern=_DEBUG_LABEL_PATTERN)] | None = None
    # The client network a trusted forwarder names in an EDNS Client Subnet option (RFC 7871);
    # never the address a query came from (dnsmesh/snapshot.py, CompiledPolicy._match).
    # Unset (None) stays out of the stored document, which reads back as it was written.
    ecs_cidrs: list[IPNetwork] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _some_criterion(self) -> SliceMatch:
        criteria = (self.client_cidrs, self.node_labels, self.debug_label, self.ecs_cidrs)
        if all(criterion is None for criterion in criteria):
            raise consistency_error(
                type(self).__name__,
                [((), "give at least one of client_cidrs, node_labels, debug_label and ecs_cidrs")],
            )
        return self


class ResourceLimits(_Strict):
    """What one agent answers for a slice at most: a token bucket of ``burst`` queries,
    refilled at ``qps`` a second (dnsmesh/slicelimit.py)."""

    qps: float = Field(gt=0, le=1_000_000)
    burst: int = Field(ge=1, le=1_000_000)


class Scale(_Strict):
    """Demand-driven slices (dnsmesh.scaling): the slice answers from as many of its
    endpoints as the query rate the agents report needs, ``min`` to ``max`` of them."""

    min: int = Field(default=1, ge=1, le=1024)
    max: int = Field(ge=1, le=1024)
    target_qps_per_endpoint: float = Field(gt=0, le=1e9)

    @model_validator(mode="after")
    def _min_below_max(self) -> Scale:
        if self.min > self.max:
            raise consistency_error(
                type(self).__name__, [(("min",), f"is more than max ({self.max})")]
            )
        return self


class Slice(_Strict):
    id: Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    match: SliceMatch
    groups: list[GroupName] | None = Field(default=None, min_length=1)
    action: SliceAction = SliceAction.ANSWER
    # Unset: the policy's. weights: ADDRESS -> weight, in place of the endpoints' own.
    strategy: Strategy | None = None
    ttl: int | None = Field(default=None, ge=0, le=86400)
    answers: int | None = Field(default=None, ge=1, le=32)
    weights: dict[str, Annotated[int, Field(ge=0, le=1_000_000)]] | None = Field(
        default=None, min_length=1, max_length=1024
    )
    resource_limits: ResourceLimits | None = None
    scale: Scale | None = None

    @model_validator(mode="after")
    def _refuse_takes_no_answers(self) -> Slice:
        if self.action is not SliceAction.REFUSE:
            return self
        problems: list[tuple[Location, str]] = [
            ((name,), "a slice with action 'refuse' takes no " + name)
            for name in (
                "groups",
                "strategy",
                "ttl",
                "answers",
                "weights",
                "resource_limits",
                "scale",
            )
            if getattr(self, name) is not None
        ]
        if problems:
            raise consistency_error(type(self).__name__, problems)
        return self

    def weight_overrides(self) -> dict[str, int]:
        """``weights`` keyed by canonical address text (as endpoints are keyed elsewhere)."""
        if not self.weights:
            return {}
        return {str(ipaddress.ip_address(text)): w for text, w in self.weights.items()}


class Cohort(StrEnum):
    """How a client is put in a group of a canary or split: by its address (it stays in its
    group while the shares move: weighted rendezvous hashing) or afresh per query."""

    CLIENT = "client"
    RANDOM = "random"


DEFAULT_MIN_REPORTS = 2


class Canary(_Strict):
    group: GroupName
    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(min_length=1)
    interval: Duration = 600.0
    max_loss: float = Field(default=0.02, ge=0.0, le=1.0)
    # None: latency is not checked.
    max_latency_ms: int | None = Field(default=None, ge=1, le=3_600_000)
    # Unset stays unset in the stored document (DEFAULT_MIN_REPORTS applies).
    min_reports: int | None = Field(default=None, ge=1, le=10_000)
    # Unset: ``client`` when spec.strategy is sticky, else ``random`` (PolicySpec.cohort).
    cohort: Cohort | None = None

    @field_validator("steps")
    @classmethod
    def _steps_increase(cls, steps: list[int]) -> list[int]:
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError("canary steps must increase")
        return steps

    @field_validator("interval")
    @classmethod
    def _interval_positive(cls, interval: float) -> float:
        if interval <= 0:
            raise ValueError("must be longer than 0")
        return interval

    @property
    def reports_needed(self) -> int:
        return DEFAULT_MIN_REPORTS if self.min_reports is None else self.min_reports


class Split(_Strict):
    """Fixed shares of the answers per group (A/B, blue/green): ``{shares: {GROUP: PERCENT}}``."""

    shares: dict[GroupName, Annotated[int, Field(ge=0, le=100)]] = Field(min_length=1)
    cohort: Cohort | None = None

    @field_validator("shares")
    @classmethod
    def _shares_sum_to_100(cls, shares: dict[str, int]) -> dict[str, int]:
        if sum(shares.values()) != 100:
            raise ValueError(f"the shares add up to {sum(shares.values())}, not 100")
        return shares


def scalable_endpoints(
    endpoints: Sequence[Endpoint], groups: Sequence[str] | None
) -> list[Endpoint]:
    """The endpoints a scaled slice takes its first N from, in their stable order: weight
    above 0, in the slice's groups (every group when it names none), by priority, then
    address (IPv4 before IPv6, numerically), so every agent counts them alike."""
    wanted = None if groups is None else set(groups)
    members = [e for e in endpoints if e.weight > 0 and (wanted is None or e.group in wanted)]
    return sorted(members, key=lambda e: (e.priority, e.address.version, int(e.address)))


def _domain_field(value: object) -> object:
    if not isinstance(value, str):
        return value
    domain = normalize_domain(value)
    zone = special_use_zone(domain)
    if zone is not None:
        raise ValueError(
            f"{domain!r} is under the special-use name {zone!r}, which every agent answers "
            "itself (RFC 6761, RFC 6762) and never from a policy"
        )
    return domain


class PolicySpec(_Strict):
    domain: Annotated[str, BeforeValidator(_domain_field)]
    ttl: int = Field(default=30, ge=0, le=86400)
    strategy: Strategy = Strategy.WEIGHTED
    answers: int = Field(default=1, ge=1, le=32)
    endpoints: list[Endpoint] = Field(min_length=1, max_length=1024)
    health: Health | None = None
    safety: Safety | None = None
    slices: list[Slice] = Field(default_factory=list)
    canary: Canary | None = None
    split: Split | None = None
    # What a query no slice matches gets; unset: ``default`` (the default view).
    unmatched: Unmatched | None = None

    @property
    def unmatched_answer(self) -> Unmatched:
        return Unmatched.DEFAULT if self.unmatched is None else self.unmatched

    @property
    def safety_rule(self) -> Safety:
        return self.safety if self.safety is not None else _DEFAULT_SAFETY

    @property
    def cohort(self) -> Cohort:
        """How the canary's or split's groups are drawn: as written, else by client for a
        sticky policy (its clients already keep their endpoint) and per query otherwise."""
        written = self.canary.cohort if self.canary else self.split.cohort if self.split else None
        if written is not None:
            return written
        return Cohort.CLIENT if self.strategy is Strategy.STICKY else Cohort.RANDOM

    @model_validator(mode="after")
    def _consistent(self) -> PolicySpec:
        problems: list[tuple[Location, str]] = []
        seen: set[str] = set()
        for index, endpoint in enumerate(self.endpoints):
            address = str(endpoint.address)
            if address in seen:
                problems.append((("endpoints", index, "address"), f"{address} appears twice"))
            seen.add(address)
        if not any(e.weight > 0 for e in self.endpoints):
            problems.append((("endpoints",), "at least one endpoint needs a weight above 0"))
        groups = {e.group for e in self.endpoints if e.group}
        problems.extend(self._slice_problems(groups))
        fallback = self.health.on_all_down if self.health is not None else None
        if isinstance(fallback, FallbackGroup) and fallback.group not in groups:
            problems.append(
                (
                    ("health", "on_all_down", "fallback_group"),
                    f"{fallback.group!r} is not a group of any endpoint",
                )
            )
        serving = sum(1 for e in self.endpoints if e.weight > 0)
        if self.safety is not None and self.safety.min_endpoints > serving:
            problems.append(
                (
                    ("safety", "min_endpoints"),
                    f"is more than the {serving} endpoints with a weight above 0",
                )
            )
        if self.canary and self.canary.group not in groups:
            problems.append(
                (("canary", "group"), f"{self.canary.group!r} is not a group of any endpoint")
            )
        problems.extend(self._split_problems(groups))
        if problems:
            raise consistency_error(type(self).__name__, problems)
        return self

    def _slice_problems(self, groups: set[str]) -> list[tuple[Location, str]]:
        problems: list[tuple[Location, str]] = []
        ids: set[str] = set()
        addresses = {str(e.address) for e in self.endpoints}
        for index, slice_ in enumerate(self.slices):
            if slice_.id in ids:
                problems.append((("slices", index, "id"), f"{slice_.id!r} appears twice"))
            ids.add(slice_.id)
            for group in slice_.groups or ():
                if group not in groups:
                    problems.append(
                        (
                            ("slices", index, "groups"),
                            f"group {group!r} is not a group of any endpoint",
                        )
                    )
            label = slice_.match.debug_label
            where: Location = ("slices", index, "match", "debug_label")
            if label is not None and self.domain.startswith("*."):
                # DEBUG.<name> of a wildcard's name is itself a name the wildcard answers.
                problems.append((where, "a wildcard policy takes no debug label"))
            elif label is not None and len(label) + 1 + len(self.domain) > _MAX_NAME:
                problems.append((where, f"{label}.{self.domain} is longer than {_MAX_NAME}"))
            problems.extend(_weight_problems(index, slice_, addresses))
            if slice_.scale is not None:
                members = len(scalable_endpoints(self.endpoints, slice_.groups))
                if slice_.scale.max > members:
                    problems.append(
                        (
                            ("slices", index, "scale", "max"),
                            f"is more than the {members} endpoints with a weight above 0 "
                            "in the slice's groups",
                        )
                    )
        return problems

    def _split_problems(self, groups: set[str]) -> list[tuple[Location, str]]:
        if self.split is None:
            return []
        if self.canary is not None:
            return [(("split",), "a policy takes a canary or a split, not both")]
        problems: list[tuple[Location, str]] = []
        for group in self.split.shares:
            if group not in groups:
                problems.append(
                    (("split", "shares", group), f"{group!r} is not a group of any endpoint")
                )
        for index, endpoint in enumerate(self.endpoints):
            if endpoint.weight > 0 and endpoint.group not in self.split.shares:
                problems.append(
                    (
                        ("endpoints", index, "group"),
                        "an endpoint with a weight above 0 must be in a group of spec.split",
                    )
                )
        return problems


_DEFAULT_SAFETY = Safety()


def _weight_problems(index: int, slice_: Slice, addresses: set[str]) -> list[tuple[Location, str]]:
    """A slice's weights must name endpoints of the policy, each once."""
    problems: list[tuple[Location, str]] = []
    seen: set[str] = set()
    for text in slice_.weights or {}:
        try:
            address = str(ipaddress.ip_address(text))
        except ValueError:
            address = None
        if address is None or address not in addresses:
            problems.append(
                (("slices", index, "weights"), f"{text!r} is not the address of an endpoint")
            )
        elif address in seen:
            problems.append((("slices", index, "weights"), f"{address} appears twice"))
        if address is not None:
            seen.add(address)
    return problems


class Metadata(_Strict):
    name: Annotated[str, Field(pattern=_NAME_RE.pattern)]
    labels: Labels = Field(default_factory=dict)
    # Set by the controller (the revision at which the policy last changed); ignored on input
    # to the agent's files, and used as the ETag by the REST API.
    revision: int | None = Field(default=None, ge=0)


class Policy(_Strict):
    api_version: Literal["dnsmesh/v1"] = Field(alias="apiVersion")
    kind: Literal["Policy"]
    metadata: Metadata
    spec: PolicySpec

    @property
    def name(self) -> str:
        return self.metadata.name

    def to_document(self, *, with_revision: bool = True) -> dict[str, Any]:
        """The JSON/YAML document form (aliases, durations as text, no unset revision)."""
        exclude: dict[str, Any] = {} if with_revision else {"metadata": {"revision"}}
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=exclude)


def field_path(loc: tuple[int | str, ...]) -> str:
    """('spec', 'endpoints', 1, 'weight') -> 'spec.endpoints[1].weight'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def field_errors(exc: ValidationError) -> list[FieldError]:
    """pydantic's errors as FieldErrors, one per offending field (deduplicated)."""
    errors: list[FieldError] = []
    seen: set[tuple[str, str]] = set()
    for err in exc.errors(include_url=False):
        path = field_path(tuple(err["loc"]))
        message = err["msg"].removeprefix("Value error, ")
        if (path, message) not in seen:
            seen.add((path, message))
            errors.append(FieldError(path, message))
    return errors


def parse_policy(document: object) -> Policy:
    """Validate one document (a mapping from YAML or JSON); raises PolicyError naming fields."""
    if not isinstance(document, dict):
        raise PolicyError([FieldError("", "a policy document must be a mapping")])
    try:
        return Policy.model_validate(document)
    except ValidationError as exc:
        metadata = document.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
        named = name if isinstance(name, str) else None
        raise PolicyError(field_errors(exc), policy=named) from exc


def check_policy_set(policies: list[Policy]) -> None:
    """A set of policies must not repeat a name or a domain: which one wins would be a guess."""
    names: dict[str, int] = {}
    domains: dict[str, str] = {}
    errors: list[FieldError] = []
    for index, policy in enumerate(policies):
        if policy.name in names:
            errors.append(
                FieldError(f"[{index}].metadata.name", f"{policy.name!r} is defined twice")
            )
        names.setdefault(policy.name, index)
        domain = policy.spec.domain
        if domain in domains and domains[domain] != policy.name:
            errors.append(
                FieldError(
                    f"[{index}].spec.domain",
                    f"{domain!r} is already the domain of policy {domains[domain]!r}",
                )
            )
        domains.setdefault(domain, policy.name)
    if errors:
        raise PolicyError(errors)
