"""``dnsmesh apply``: a set of policies applied all or none, each change checked by the server.

Three steps. *Plan*: compare every document with the controller's policy of that name
(unchanged, create, configure; with ``--prune``, the policies to delete). *Check*: each
change is sent with ``?dry_run=true``, so the controller runs the very validation and
conflict checks of the write (a domain another policy holds, a policy changed since we read
it) and stores nothing. *Apply*: only when no change was refused, the same requests for
real. Every document's outcome is printed with where it came from; anything refused makes
the exit status 1 and, at the check, applies nothing.

The check and the writes are separate transactions: a writer who slips in between can
still make a write fail (``If-Match`` keeps it from overwriting their change); what was
applied and what was not is then printed, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, TextIO

import yaml

from cli.client import ControllerClient, ControllerRefused, TokenRefused
from dnsmesh.policy import Policy
from dnsmesh.policyfile import SourcedPolicy


class Change(Enum):
    UNCHANGED = "unchanged"
    CREATE = "created"
    CONFIGURE = "configured"
    PRUNE = "pruned"


@dataclass(slots=True)
class Step:
    """One policy's change: what it is, where it comes from, and what the server said."""

    change: Change
    name: str
    sourced: SourcedPolicy | None  # None for a prune: the files do not hold it
    current: Policy | None  # the controller's policy of that name, when there is one
    refusal: str | None = None
    done: bool = False

    @property
    def where(self) -> str:
        if self.sourced is None:
            return "on the controller, not in the files"
        return f"{self.sourced.source}, document {self.sourced.document}"


def plan(
    wanted: list[SourcedPolicy], existing: dict[str, Policy], prune_within: dict[str, str] | None
) -> list[Step]:
    """The steps, in the order of the files, then the prunes by name."""
    steps = []
    for sourced in wanted:
        current = existing.get(sourced.policy.name)
        if current is None:
            change = Change.CREATE
        elif _comparable(current) == _comparable(sourced.policy):
            change = Change.UNCHANGED
        else:
            change = Change.CONFIGURE
        steps.append(Step(change, sourced.policy.name, sourced, current))
    if prune_within is not None:
        keep = {s.policy.name for s in wanted}
        for name, current in sorted(existing.items()):
            if name not in keep and _matches(current, prune_within):
                steps.append(Step(Change.PRUNE, name, None, current))
    return steps


def send(client: ControllerClient, step: Step, *, dry_run: bool) -> None:
    """The step's request (``dry_run``: checked by the server, nothing stored)."""
    # If-Match: a change made by someone else since our read is refused, not overwritten.
    revision = step.current.metadata.revision if step.current is not None else None
    if step.change is Change.CREATE:
        assert step.sourced is not None
        client.create_policy(step.sourced.policy, dry_run=dry_run)
    elif step.change is Change.CONFIGURE:
        assert step.sourced is not None
        client.replace_policy(step.sourced.policy, if_match=revision, dry_run=dry_run)
    elif step.change is Change.PRUNE:
        client.delete_policy(step.name, if_match=revision, dry_run=dry_run)


def _try(client: ControllerClient, step: Step, *, dry_run: bool) -> bool:
    try:
        send(client, step, dry_run=dry_run)
    except TokenRefused:
        raise  # the token, not this document: every request would be refused alike
    except ControllerRefused as refused:
        step.refusal = refused.reason
        return False
    return True


def apply_set(
    args: argparse.Namespace,
    wanted: list[SourcedPolicy],
    prune_within: dict[str, str],
    out: TextIO = sys.stdout,
) -> int:
    with ControllerClient(args.server, args.token) as client:
        existing = {p.name: p for p in client.list_policies().policies}
        steps = plan(wanted, existing, prune_within if args.prune else None)
        changes = [s for s in steps if s.change is not Change.UNCHANGED]
        refused = [s for s in changes if not _try(client, s, dry_run=True)]
        if refused or args.dry_run:
            if args.dry_run:
                for step in changes:
                    out.writelines(_diff(step))
            _report(steps, out, dry_run=args.dry_run)
            if refused:
                _say(f"{len(refused)} of {len(changes)} changes refused; nothing was applied")
                return 1
            return 0
        for index, step in enumerate(changes):
            if not _try(client, step, dry_run=False):
                _report(steps, out, dry_run=False)
                _say(
                    f"policy/{step.name} was refused after the check passed (a concurrent "
                    f"change?): {index} of {len(changes)} changes applied, the rest not"
                )
                return 1
            step.done = True
    _report(steps, out, dry_run=False)
    return 0


def _report(steps: list[Step], out: TextIO, *, dry_run: bool) -> None:
    """One line per document (and prune): its outcome and where it comes from."""
    blocked = any(s.refusal for s in steps) and not any(s.done for s in steps)
    for step in steps:
        verb = step.change.value
        if step.refusal is not None:
            outcome = f"refused: {step.refusal}"
        elif step.change is Change.UNCHANGED:
            outcome = verb
        elif dry_run and not blocked:
            outcome = f"{verb} (dry run)"
        elif step.done:
            outcome = verb
        else:
            outcome = f"not applied (would be {verb})"
        print(f"policy/{step.name} {outcome}  [{step.where}]", file=out)
    out.flush()


def _say(message: str) -> None:
    print(f"dnsmesh apply: {message}", file=sys.stderr)


def _comparable(policy: Policy) -> dict[str, Any]:
    return policy.to_document(with_revision=False)


def _matches(policy: Policy, selector: dict[str, str]) -> bool:
    return all(policy.metadata.labels.get(k) == v for k, v in selector.items())


def _diff(step: Step) -> Iterable[str]:
    current, sourced = step.current, step.sourced
    before = yaml.safe_dump(_comparable(current), sort_keys=False) if current else ""
    after = yaml.safe_dump(_comparable(sourced.policy), sort_keys=False) if sourced else ""
    return difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile=f"controller/{step.name}" if current else "/dev/null",
        tofile=step.where if sourced else "/dev/null",
    )
