"""Policy files: YAML text (one or many '---' documents) to validated policies.

``parse_policy_documents`` is pure. ``load_policy_path`` reads a file or a folder of
``*.yaml``/``*.yml`` files; it is the core's only filesystem read, kept here so the agent
and ``dnsmesh apply`` load files the same way and report errors the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dnsmesh.errors import FieldError, PolicyError, PolicyFileError
from dnsmesh.policy import Policy, check_policy_set, parse_policy

POLICY_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True)
class SourcedPolicy:
    """A policy and where it came from, for error messages and diffs."""

    policy: Policy
    source: str
    document: int  # 1-based position of the document in its file


def parse_policy_documents(text: str, source: str) -> list[SourcedPolicy]:
    """Every document of one file, or PolicyFileError for the first one that is bad.

    Empty documents (a trailing '---') are skipped. A file is all or nothing: one bad
    document refuses the whole file.
    """
    # Imported on the first file read, not with the module: an agent fed by a controller
    # only never reads one, and its cold start does without yaml's ~40 ms.
    from dnsmesh import yamldocs

    try:
        documents = yamldocs.load_documents(text)
    except yamldocs.Error as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        message = f"not valid YAML: {where}{problem}"
        raise PolicyFileError(source, [FieldError("", message)]) from exc
    out: list[SourcedPolicy] = []
    for number, document in enumerate(documents, start=1):
        if document is None:
            continue
        try:
            policy = parse_policy(document)
        except PolicyError as exc:
            raise PolicyFileError(source, exc.errors, document=number) from exc
        out.append(SourcedPolicy(policy, source, number))
    return out


def policy_files(path: Path) -> list[Path]:
    """The policy files at ``path``: the file itself, or the folder's YAML files sorted by name."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in POLICY_SUFFIXES and p.is_file())
    return [path]


# What identifies one version of a file without reading it: size, mtime, ctime, inode.
FileVersion = tuple[int, int, int, int]


class ParsedFiles:
    """The policies parsed from each file, kept while the file is the same version.

    A reload of a folder where one file changed parses that file only; the others give the
    same Policy objects as last time, which is what lets the compile keep their compiled
    form (dnsmesh.snapshot.compile_snapshot's ``previous``). Files that are gone are
    forgotten at each load.
    """

    __slots__ = ("_files",)

    def __init__(self) -> None:
        self._files: dict[str, tuple[FileVersion, list[SourcedPolicy]]] = {}

    def parse(self, file: Path) -> list[SourcedPolicy]:
        """The file's policies: those parsed before if its version did not change."""
        source = str(file)
        try:
            st = file.stat()
            version = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            hit = self._files.get(source)
            if hit is not None and hit[0] == version:
                return hit[1]
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyFileError(source, [FieldError("", f"cannot read: {exc}")]) from exc
        # The version is the one seen before reading: a write during the read shows as a
        # new version at the next load, which parses the file again.
        parsed = parse_policy_documents(text, source)
        if hit is not None:
            parsed = _reuse_unchanged(hit[1], parsed)
        self._files[source] = (version, parsed)
        return parsed

    def keep_only(self, files: list[Path]) -> None:
        wanted = {str(file) for file in files}
        for source in [s for s in self._files if s not in wanted]:
            del self._files[source]


def _reuse_unchanged(before: list[SourcedPolicy], now: list[SourcedPolicy]) -> list[SourcedPolicy]:
    """``now``, with each policy equal to the one of its name ``before`` replaced by that one.

    An edit of one document in a file of 1,000 re-parses them all; the 999 equal to what
    they were keep their Policy objects, so the compile keeps their compiled form and the
    health monitor decides one policy again instead of 1,000 (on the event loop: 12-20 ms
    at 1,000 policies a file, measured with 100,000 policies).
    """
    old = {s.policy.name: s.policy for s in before}
    out = []
    for sourced in now:
        kept = old.get(sourced.policy.name)
        if kept is not None and kept is not sourced.policy and kept == sourced.policy:
            sourced = SourcedPolicy(kept, sourced.source, sourced.document)
        out.append(sourced)
    return out


def load_policy_path(path: Path, parsed: ParsedFiles | None = None) -> list[SourcedPolicy]:
    """All policies under ``path``, validated as one set (no repeated name or domain).

    ``parsed``: the files parsed by earlier loads, reused for the files that did not change.
    """
    if not path.exists():
        raise PolicyFileError(str(path), [FieldError("", "no such file or folder")])
    parsed = parsed if parsed is not None else ParsedFiles()
    files = policy_files(path)
    parsed.keep_only(files)
    loaded: list[SourcedPolicy] = []
    for file in files:
        loaded.extend(parsed.parse(file))
    check_sourced_set(loaded)
    return loaded


def check_sourced_set(loaded: list[SourcedPolicy]) -> None:
    """check_policy_set, with errors that name the file and document of the duplicate."""
    try:
        check_policy_set([s.policy for s in loaded])
    except PolicyError as exc:
        first = exc.errors[0]
        index = int(first.path[1 : first.path.index("]")])
        culprit = loaded[index]
        field = first.path[first.path.index("]") + 2 :]
        raise PolicyFileError(
            culprit.source, [FieldError(field, first.message)], document=culprit.document
        ) from exc
