"""Served share: storing the answers agents report, and comparing them with the weights.

Agents send what they answered per (policy, slice, endpoint) since their last report
(dnsmesh.protocol.AnswerReport). Each batch is added, per key, to the row of the time bucket
it was received in (``bucket_s`` seconds long) in ``answer_buckets``: one row per key and
bucket whatever the number of agents, pruned past the longest window. A share is the sum
of the buckets overlapping the window, compared by dnsmesh.share with the policy as stored
and the quorum's down set, read in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from controller.db.session import Database
from controller.repositories import answers
from controller.repositories.drains import read_drains
from controller.repositories.health import read_down
from controller.repositories.policies import policy_endpoints, require_policy
from dnsmesh.policy import parse_policy
from dnsmesh.protocol import AnswerCount
from dnsmesh.scaling import ScaleRule
from dnsmesh.share import PolicyShare, ShareRule, policy_share

DEFAULT_WINDOW_S = 300
MIN_WINDOW_S = 10


@dataclass(frozen=True, slots=True)
class ShareSettings:
    """``dnsmesh controller --share-*`` flags (short values in tests)."""

    rule: ShareRule = field(default_factory=ShareRule)
    bucket_s: int = 10  # answers are summed per this many seconds
    retention_s: int = 3600  # the longest window; older buckets are pruned
    evaluate_s: float = 10.0  # the drift gauges and flag logs are brought up to date this often
    prune_s: float = 60.0
    batch_delay_s: float = 0.05
    scale: ScaleRule = field(default_factory=ScaleRule)  # demand-driven slices (--scale-*)


@dataclass(frozen=True, slots=True)
class ReceivedAnswers:
    """One answer report as the controller received it (its clock, not the agent's)."""

    agent_id: str
    at: datetime
    counts: Sequence[AnswerCount]


@dataclass(frozen=True, slots=True)
class ShareView:
    """GET /v1/policies/{name}/share."""

    policy: str
    window_s: int
    share: PolicyShare
    rule: ShareRule

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"window_s": self.window_s, "policy": self.policy}
        if self.share.slices:
            body["slices"] = [
                {"id": slice_id, **share.to_json()} for slice_id, share in self.share.slices.items()
            ]
        body.update(self.share.policy.to_json())
        body["threshold"] = self.rule.drift_threshold
        body["min_answers"] = self.rule.min_answers
        return body


class ServedShareService:
    def __init__(self, db: Database, settings: ShareSettings | None = None) -> None:
        self.db = db
        self.settings = settings or ShareSettings()

    def _bucket(self, at: datetime) -> int:
        size = self.settings.bucket_s
        return int(at.timestamp()) // size * size

    def write(self, batch: Sequence[ReceivedAnswers]) -> int:
        """Adds a batch of reports to their buckets in one transaction; returns the rows."""
        summed: dict[answers.BucketKey, int] = {}
        for received in batch:
            bucket = self._bucket(received.at)
            for count in received.counts:
                key = (count.policy, count.slice, count.endpoint, bucket)
                summed[key] = summed.get(key, 0) + count.answers
        if summed:
            self.db.write(lambda session: answers.add_answers(session, summed))
        return len(summed)

    def prune(self) -> int:
        cutoff = self._bucket(self.db.clock()) - self.settings.retention_s - self.settings.bucket_s
        return self.db.write(lambda session: answers.delete_buckets_before(session, cutoff))

    def _since(self, window_s: int) -> int:
        """The first bucket that overlaps the last ``window_s`` seconds."""
        return self._bucket(self.db.clock()) - (window_s // self.settings.bucket_s) * (
            self.settings.bucket_s
        )

    def share(self, name: str, window_s: int) -> ShareView:
        """One policy's share over the window; NotFound if there is no such policy."""

        def read(session: Session) -> ShareView:
            policy = parse_policy(require_policy(session, name).document)
            down = frozenset(read_down(session))
            drained = read_drains(session, self.db.clock()).of(name)
            counts = answers.window_answers(session, self._since(window_s), name).get(name, {})
            result = policy_share(policy, down, counts, self.settings.rule, drained)
            return ShareView(name, window_s, result, self.settings.rule)

        return self.db.read(read)

    def shares(self, window_s: int) -> dict[str, PolicyShare]:
        """Every policy's share over the window, in one read (for the drift gauges)."""

        def read(session: Session) -> dict[str, PolicyShare]:
            down = frozenset(read_down(session))
            drains = read_drains(session, self.db.clock())
            counts = answers.window_answers(session, self._since(window_s))
            return {
                name: policy_share(
                    parse_policy(doc),
                    down,
                    counts.get(name, {}),
                    self.settings.rule,
                    drains.of(name),
                )
                for name, doc in policy_endpoints(session)
            }

        return self.db.read(read)
