"""``dnsmesh apply``: a set of policies applied all or none, in one transaction.

The whole set goes to ``POST /v1/apply`` (with ``--prune``: and the labels of the
policies to delete when the files do not hold them). The controller checks every document
as a single write would (validation, a domain another policy holds), applies them all in
one transaction or, when any is refused, none, and says what became of each. Here each
outcome is printed with the file and document it came from; anything refused makes the
exit status 1. ``--dry-run`` is the same request with ``?dry_run=true``: every check, then
nothing stored; the diffs against the controller's policies are printed too.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import yaml

from cli.client import ControllerClient, SetOutcome
from dnsmesh.policy import Policy
from dnsmesh.policyfile import SourcedPolicy

_NOT_IN_FILES = "on the controller, not in the files"


def apply_set(
    args: argparse.Namespace,
    wanted: list[SourcedPolicy],
    prune_within: dict[str, str],
    out: TextIO = sys.stdout,
) -> int:
    with ControllerClient(args.server, args.token, ca_file=args.ca_file) as client:
        existing = {p.name: p for p in client.list_policies().policies} if args.dry_run else {}
        result = client.apply_set(
            [s.policy for s in wanted],
            prune=prune_within if args.prune else None,
            dry_run=args.dry_run,
            force=args.force,
        )
    refused = [item for item in result.items if item.refusal is not None]
    if args.dry_run:
        for item in result.items:
            if item.outcome in ("created", "configured", "pruned"):
                sourced = wanted[item.index] if item.index < len(wanted) else None
                out.writelines(_diff(item.name, existing.get(item.name), sourced))
    for item in result.items:
        where = _where(wanted, item.index)
        print(
            f"policy/{item.name} {_outcome(item, refused=bool(refused), dry_run=args.dry_run)}"
            f"  [{where}]",
            file=out,
        )
    out.flush()
    if refused:
        print(f"dnsmesh apply: {result.message}", file=sys.stderr)
        return 1
    return 0


def _outcome(item: SetOutcome, *, refused: bool, dry_run: bool) -> str:
    if item.refusal is not None:
        return f"refused: {item.refusal}"
    if item.outcome == "unchanged":
        return "unchanged"
    if refused:
        return f"not applied (would be {item.outcome})"
    return f"{item.outcome} (dry run)" if dry_run else item.outcome


def _where(wanted: list[SourcedPolicy], index: int) -> str:
    if index >= len(wanted):
        return _NOT_IN_FILES
    return f"{wanted[index].source}, document {wanted[index].document}"


def _comparable(policy: Policy) -> dict[str, Any]:
    return policy.to_document(with_revision=False)


# libyaml's emitter when PyYAML has it: a dry run of 1,000 changed policies dumps 2,000
# documents, and the pure-Python emitter took most of the CLI's time for them.
_Dumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _yaml(policy: Policy) -> str:
    return yaml.dump(_comparable(policy), Dumper=_Dumper, sort_keys=False)


def _diff(name: str, current: Policy | None, sourced: SourcedPolicy | None) -> Iterable[str]:
    before = _yaml(current) if current else ""
    after = _yaml(sourced.policy) if sourced else ""
    return difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile=f"controller/{name}" if current else "/dev/null",
        tofile=f"{sourced.source} (document {sourced.document})" if sourced else "/dev/null",
    )
