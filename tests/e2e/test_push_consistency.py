"""Thousands of successive updates while a client queries without pause: every answer
belongs to one revision that existed (never a blend of two), answers never go back in
time, and the agent ends at the last revision.

Each update sets both A endpoints of one policy (answers: 2) to addresses that encode the
same counter (127.1.hi.lo and 127.2.hi.lo), so a response mixing two revisions would show
two counters. Updates are written straight through the store into the controller's SQLite
file (as fast as one process can commit); the controller notices them by its catch-up
read, as it would commits of another replica. The normal suite runs 1,000 updates; the
10,000-update run is ``-m slow``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import pytest

from controller.db.engine import build_engine
from controller.db.session import Database
from controller.services.policies import PolicyService
from tests.e2e.mesh_support import agent_id, agent_process, mesh
from tests.integration.sync_support import policy
from tests.support.polling import wait_until


def addresses(counter: int) -> list[str]:
    hi, lo = divmod(counter, 256)
    return [f"127.1.{hi}.{lo}", f"127.2.{hi}.{lo}"]


def counter_of(answer: list[str]) -> int:
    """The counter both records encode; AssertionError for a blend or a wrong shape."""
    assert len(answer) == 2, f"expected 2 records, got {answer}"
    counters = set()
    endpoints = set()
    for address in answer:
        _, which, hi, lo = (int(x) for x in address.split("."))
        endpoints.add(which)
        counters.add(hi * 256 + lo)
    assert endpoints == {1, 2} and len(counters) == 1, f"a blend of revisions: {answer}"
    return counters.pop()


class Querier(threading.Thread):
    """Asks the agent without pause until told to stop; checks every answer as it comes."""

    def __init__(self, host: str, port: int, deadline: float) -> None:
        super().__init__(daemon=True)
        self.host, self.port, self.deadline = host, port, deadline
        self.stop = threading.Event()
        self.seen: list[int] = []
        self.failure: BaseException | None = None
        self.timeouts = 0

    def run(self) -> None:
        last = -1
        try:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                query = dns.message.make_query("counter.mesh.internal", "A")
                try:
                    response = dns.query.udp(query, self.host, port=self.port, timeout=1.0)
                except dns.exception.Timeout:
                    self.timeouts += 1
                    continue
                answer = sorted(
                    r.address for s in response.answer if s.rdtype == dns.rdatatype.A for r in s
                )
                counter = counter_of(answer)
                assert counter >= last, f"answers went back in time: {last} -> {counter}"
                last = counter
                self.seen.append(counter)
        except BaseException as exc:  # reported by the test thread
            self.failure = exc


def run_updates(tmp_path: Path, updates: int, budget: float, writer: str = "store") -> None:
    with mesh(tmp_path) as m:
        m.rest.put(policy("counter", addresses(0), answers=2))
        with agent_process(m.agent_args()) as agent:
            address = agent.addresses[0]
            querier = Querier(address.host, address.port, time.monotonic() + budget)
            wait_until(lambda: agent.events("sync.applied"), 5, "the first snapshot")
            querier.start()
            engine = build_engine(m.database_url)
            try:
                store = PolicyService(Database(engine))
                began = time.perf_counter()
                last = 0
                for n in range(1, updates + 1):
                    document = policy("counter", addresses(n), answers=2)
                    if writer == "rest":  # the controller pushes each commit as it happens
                        last = m.rest.put(document)
                    else:
                        last = store.put_policy("counter", document, actor="t").policy.revision
                    if querier.failure is not None:
                        break
                wrote = time.perf_counter() - began
            finally:
                engine.dispose()
            try:
                wait_until(
                    lambda: (
                        querier.failure is not None
                        or (querier.seen and querier.seen[-1] == updates)
                    ),
                    max(10.0, budget - wrote),
                    "the agent answering the last update",
                )
            finally:
                querier.stop.set()
                querier.join(5)
            if querier.failure is not None:
                raise querier.failure
            # The log line is written just after the swap; the test's reader thread may see
            # it a moment after the answer that showed the swap.
            wait_until(
                lambda: agent.events("sync.applied")[-1]["revision"] == last, 5, "the last apply"
            )
            me = agent_id(agent)
            wait_until(
                lambda: (a := m.rest.agent(me)) and a["applied_revision"] == last, 5, "the ACK"
            )
            swaps = len(agent.events("sync.applied"))
            print(
                f"\n{updates} updates ({writer}) written in {wrote:.1f}s; "
                f"{len(querier.seen)} answers checked, {len(set(querier.seen))} distinct "
                f"revisions seen, {swaps} swaps, "
                f"{querier.timeouts} timeouts; agent at revision {last}"
            )
            assert len(set(querier.seen)) > 2  # the client really saw updates go by


@pytest.mark.parametrize("writer", ["rest", "store"])
def test_updates_under_queries_are_never_blended(tmp_path: Path, writer: str) -> None:
    # Through the API each commit is pushed as it happens (many small deltas to coalesce);
    # 500 of those cost as much time as 1,000 straight into the store.
    run_updates(tmp_path, 500 if writer == "rest" else 1_000, budget=60.0, writer=writer)


@pytest.mark.slow
def test_ten_thousand_updates_under_queries_are_never_blended(tmp_path: Path) -> None:
    run_updates(tmp_path, 10_000, budget=300.0)
