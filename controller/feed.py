"""The revision feed: follows the committed revision and builds the updates agents need.

The feed knows one ``head`` (the newest revision this replica has seen committed) and keeps
an in-memory window of the changes that led there. An update for an agent at ``since`` is a
delta built from the window (or from the change log when the window does not reach back),
or a snapshot of every policy when the log does not reach back either (compaction).
Besides policies, a snapshot carries the mesh-wide down set
(controller.services.endpoint_health), and a delta carries it when a down-set change (a
change-log row of its own, operation ``down``) lies in its range; the operators' drains
travel the same way (operation ``drain``), and so does the probe assignment (operation
``probers``, controller.services.probe_assignment), and so do the scaled slices' counts
(operation ``scale``, controller.services.scaling). Each
update is built and encoded once per starting revision and shared by every agent that
starts there, so a commit costs one read of the change log per replica, not one per agent.
Every update names the mesh (``mesh_id``, read once at start: it never changes).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from enum import Enum

from controller.repositories.history import Change
from controller.services.policies import PolicyService
from dnsmesh import protocol
from dnsmesh.logs import fields
from dnsmesh.protocol import Document

log = logging.getLogger("dnsmesh.controller.feed")


@dataclass(frozen=True, slots=True)
class Update:
    """An encoded snapshot or delta that takes an agent to ``revision``."""

    revision: int
    text: str


class Moved(Enum):
    NO = "no"
    FORWARD = "forward"
    BACK = "back"  # the database went back in time (restored): everyone needs a snapshot


class Feed:
    def __init__(self, store: PolicyService, *, window: int, retention: int) -> None:
        self.store = store
        self.window_size = window
        self.retention = retention  # revisions of change log to keep; 0: keep all
        self.head = 0
        self.mesh_id: str | None = None  # read at start
        self.encoded = 0  # updates built and encoded (each shared by many agents)
        self._window: deque[Change] = deque()
        self._floor = 0  # the window holds every change in (floor, head]
        self._deltas: dict[int, Update] = {}  # since -> the update to head
        self._snapshot: Update | None = None
        # The policies at the head by name: the last snapshot with every change since applied
        # as catch_up reads it (whatever the window keeps), for stale reads while the
        # database is away (known_policies). None until a snapshot, or after a gap.
        self._known: tuple[int, dict[str, Document]] | None = None
        self._log_reads: dict[int, asyncio.Future[Update]] = {}  # since -> the read under way
        self._snapshot_lock = asyncio.Lock()
        self._advance_lock = asyncio.Lock()
        self._advanced = asyncio.Event()  # set, and replaced by a fresh one, at every move
        self._kept_after = 0  # the last compaction point

    async def start(self) -> None:
        self.mesh_id = await asyncio.to_thread(self.store.mesh_id)
        self.head = self._floor = await asyncio.to_thread(self.store.current_revision)

    async def catch_up(self) -> Moved:
        """Reads the committed revision; if it moved, loads the changes that moved it."""
        async with self._advance_lock:
            current = await asyncio.to_thread(self.store.current_revision)
            if current == self.head:
                return Moved.NO
            if current < self.head:
                log.warning("feed.revision_went_back", extra=fields(was=self.head, now=current))
                self._window.clear()
                self.head = self._floor = current
                moved = Moved.BACK
            else:
                changes = await asyncio.to_thread(self.store.changes_since, self.head)
                self._apply_known(changes, current)
                if changes and changes[0].revision == self.head + 1:
                    self._window.extend(changes)
                else:  # compacted past our head while we were not looking
                    self._window.clear()
                    self._floor = max(current, changes[-1].revision if changes else 0)
                self.head = max(current, changes[-1].revision if changes else current)
                while len(self._window) > self.window_size:
                    self._floor = self._window.popleft().revision
                moved = Moved.FORWARD
            self._deltas.clear()
            if moved is Moved.BACK:
                self._snapshot = self._known = None
            advanced, self._advanced = self._advanced, asyncio.Event()
            advanced.set()
            return moved

    async def wait_moved(self, within_s: float) -> bool:
        """Waits until the head moves; False after ``within_s`` seconds."""
        try:
            await asyncio.wait_for(self._advanced.wait(), within_s)
        except TimeoutError:
            return False
        return True

    async def compact(self) -> int:
        """Trims the change log to ``retention`` revisions behind the head (when it moved)."""
        keep_after = self.head - self.retention
        if self.retention <= 0 or keep_after <= self._kept_after:
            return 0
        self._kept_after = keep_after
        # Forget the same changes here first, so every replica answers an agent that far
        # behind alike (with a snapshot), whatever its window held, from the moment anyone
        # can see the log trimmed.
        while self._window and self._window[0].revision <= keep_after:
            self._floor = self._window.popleft().revision
        self._floor = max(self._floor, keep_after)
        self._deltas = {s: u for s, u in self._deltas.items() if s >= self._floor}
        removed = await asyncio.to_thread(self.store.compact_changes, keep_after)
        if removed:
            log.info("changes.compacted", extra=fields(removed=removed, kept_after=keep_after))
        return removed

    async def update_for(self, since: int, *, snapshot: bool = False) -> Update | None:
        """What takes an agent at ``since`` to the head; None when it is there already.

        ``since`` 0 is an empty state like any other (a delta if the log reaches back to
        revision 1); a new agent gets a snapshot because its hello asks for one. An agent
        ahead of the head (the database was restored) gets a snapshot too.
        """
        if snapshot or since > self.head:
            return await self.snapshot()
        if since == self.head:
            return None
        cached = self._deltas.get(since)
        if cached is not None:
            return cached
        if since >= self._floor:
            update = self._encode_delta(since, [c for c in self._window if c.revision > since])
            self._deltas[since] = update
            return update
        # Older than the window: the change log, read once for every agent waiting on it.
        reading = self._log_reads.get(since)
        if reading is None:
            reading = asyncio.ensure_future(self._from_log(since))
            self._log_reads[since] = reading
            reading.add_done_callback(lambda _: self._log_reads.pop(since, None))
        return await asyncio.shield(reading)

    async def _from_log(self, since: int) -> Update:
        changes = await asyncio.to_thread(self.store.changes_since, since)
        if not changes or changes[0].revision != since + 1:
            return await self.snapshot()  # the log no longer reaches back that far
        return self._encode_delta(since, changes)

    async def snapshot(self) -> Update:
        """Every policy at (at least) the head; shared until the head moves."""
        async with self._snapshot_lock:
            cached = self._snapshot
            if cached is not None and cached.revision >= self.head:
                return cached
            listing = await asyncio.to_thread(self.store.list_policies)
            message = protocol.build_snapshot(
                listing.revision,
                listing.items,
                listing.down,
                self.mesh_id,
                listing.drains,
                listing.rollouts,
                listing.probers,
                listing.slice_scale,
            )
            self.encoded += 1
            self._snapshot = Update(listing.revision, protocol.encode_message(message))
            if self._known is None or listing.revision >= self._known[0]:
                by_name = {str(doc["metadata"]["name"]): doc for doc in listing.items}
                self._known = (listing.revision, by_name)
            return self._snapshot

    def known_policies(self) -> tuple[int, list[Document]] | None:
        """(revision, the policies by name) as this replica knows them, without the database;
        None before the first snapshot or after a gap in the changes it read."""
        known = self._known
        if known is None:
            return None
        revision, by_name = known
        return revision, [by_name[name] for name in sorted(by_name)]

    def _apply_known(self, changes: list[Change], current: int) -> None:
        known = self._known
        if known is None:
            return
        revision, by_name = known
        newer = [c for c in changes if c.revision > revision]
        reaches = (newer[-1].revision if newer else revision) >= current
        if not reaches or (newer and newer[0].revision != revision + 1):
            self._known = None  # the log was compacted past it: the hub reads them again
            return
        if not newer:
            return
        documents = dict(by_name)  # a new dict: a reader may hold the old one
        for change in newer:
            if not change.touches_policy:
                continue
            if change.document is None:
                documents.pop(change.policy, None)
            else:
                documents[change.policy] = change.document
        self._known = (newer[-1].revision, documents)

    def _encode_delta(self, since: int, changes: list[Change]) -> Update:
        # A down-set change carries the whole set: the last one in the range is the news.
        down = next((c.down for c in reversed(changes) if c.is_down), None)
        drains = next((c.drains for c in reversed(changes) if c.is_drain), None)
        rollouts = next((c.rollouts for c in reversed(changes) if c.is_rollout), None)
        probers = next((c.probers for c in reversed(changes) if c.is_probers), None)
        scaled = next((c.slice_scale for c in reversed(changes) if c.is_scale), None)
        delta = protocol.build_delta(
            since,
            changes[-1].revision,
            ((c.policy, c.document) for c in changes if c.touches_policy),
            down,
            self.mesh_id,
            drains,
            rollouts,
            probers,
            scaled,
        )
        self.encoded += 1
        return Update(delta.revision, protocol.encode_message(delta))
