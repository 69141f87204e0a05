"""The answers counted since the last report, for the controller's served-share view.

Every report interval the sync channel takes an ``AnswerReport`` here: what each
(policy, slice, endpoint) counter gained since the previous take (the counters are the
monotonic totals of agent/answer_counts.py, the same the metrics export). A report is
counted by the controller once or not at all, never twice:

* a report that was certainly not delivered (the WebSocket was closed before it went out,
  a poll's POST was refused or could not connect) is put back and merged into the next;
* one whose fate is unknown (the connection died after it was written) is not re-sent,
  since the controller may have stored it; what is lost is bounded by the reports written
  into a connection between its last delivered frame and its detected death (the
  keepalive timeout, about two ping intervals) and, on a restart, the one interval not
  yet reported.

Runs on the event loop's thread, like the queries and the counters it reads.
"""

from __future__ import annotations

from agent.answer_counts import AnswerKey
from agent.served import ServedSnapshot
from dnsmesh.protocol import AnswerCount, AnswerReport
from dnsmesh.share import counter_deltas


class AnswerReports:
    def __init__(self, served: ServedSnapshot) -> None:
        self._served = served
        self._seen: dict[AnswerKey, int] = {}  # the totals at the last take
        self._unsent: dict[AnswerKey, int] = {}  # gained but not handed over (put back)

    def take(self) -> AnswerReport | None:
        """The answers gained since the last take, with any put back; None if none."""
        served = self._served
        totals = served.answers.totals(served.snapshot)
        # Keys no longer declared are gone from the totals: their put-back counts go too,
        # so what waits here stays bounded by the policies being served.
        unsent = {key: count for key, count in self._unsent.items() if key in totals}
        for key, gained in counter_deltas(self._seen, totals).items():
            unsent[key] = unsent.get(key, 0) + gained
        self._seen = totals
        self._unsent = {}
        if not unsent:
            return None
        counts = [
            AnswerCount(policy=policy, slice=slice_id, endpoint=endpoint, answers=count)
            for (policy, slice_id, endpoint), count in sorted(unsent.items())
        ]
        return AnswerReport(counts=counts)

    def put_back(self, report: AnswerReport) -> None:
        """``report`` was certainly not delivered: its counts go out with the next one."""
        for count in report.counts:
            key = (count.policy, count.slice, count.endpoint)
            self._unsent[key] = self._unsent.get(key, 0) + count.answers
