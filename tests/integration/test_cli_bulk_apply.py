"""``dnsmesh apply -f`` of 1,000 policies: one request to POST /v1/apply, one revision, all or
none, and a dry run that refuses what the real apply would (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_cli_client import Scope

# The fixtures, re-exported: one controller per backend for this module too.
from tests.integration.test_cli_client import mesh as mesh
from tests.integration.test_cli_client import scope as scope

SIZE = 1000
# Each test runs the CLI on 1,000 documents up to four times: on the loaded test machine
# that has taken longer than the suite's 120 s default.
pytestmark = pytest.mark.timeout(300)


def _bulk(scope: Scope, folder: Path, *, bad: str | None = None, at: int = 0) -> Path:
    """One file of SIZE documents; ``bad`` replaces document ``at`` (0-based)."""
    documents = [scope.policy(f"bulk{i:04d}", team="bulk") for i in range(SIZE)]
    if bad is not None:
        documents[at] = bad
    folder.mkdir(exist_ok=True)
    (folder / "set.yaml").write_text("---\n".join(documents))
    return folder


def _revision(scope: Scope) -> int:
    done = scope.mesh.run("get", "policies", "-o", "json", role="viewer")
    assert done.returncode == 0, done.stderr
    # The list answers the mesh revision in its body; the CLI prints the items only, so
    # the highest policy revision stands for it (no other write happens in this module's
    # tests while one runs).
    return max((doc["metadata"]["revision"] for doc in json.loads(done.stdout)), default=0)


def test_a_thousand_policies_are_one_revision(scope: Scope, tmp_path: Path) -> None:
    before = _revision(scope)
    status, out = scope.mesh.cli("apply", "-f", str(_bulk(scope, tmp_path / "set")))
    assert status == 0, out[-2000:]
    assert out.count(" created  [") == SIZE
    stored = scope.policies("bulk")
    assert len(stored) == SIZE
    assert {doc["metadata"]["revision"] for doc in stored.values()} == {before + 1}

    # The same files again change nothing: no revision.
    status, out = scope.mesh.cli("apply", "-f", str(tmp_path / "set"))
    assert status == 0 and out.count(" unchanged  [") == SIZE
    assert _revision(scope) == before + 1


def test_one_invalid_document_of_a_thousand_applies_none_and_is_named(
    scope: Scope, tmp_path: Path
) -> None:
    invalid = scope.policy("bulk0500", team="bulk").replace("weight: 10}", "weight: -3}")
    folder = _bulk(scope, tmp_path / "set", bad=invalid, at=500)
    before = _revision(scope)
    for dry in ((), ("--dry-run",)):
        status, out = scope.mesh.cli("apply", "-f", str(folder), *dry)
        assert status == 1, out[-2000:]
        # The CLI validates every document before sending: the file, document and field.
        assert f"{folder / 'set.yaml'}" in out and "document 501" in out, out[-2000:]
        assert "weight" in out
        assert scope.policies("bulk") == {}
    assert _revision(scope) == before


def test_one_conflicting_document_of_a_thousand_applies_none_dry_run_alike(
    scope: Scope, tmp_path: Path
) -> None:
    """A domain held by a policy outside the set: only the server can tell; the dry run
    gets the same refusal as the apply."""
    holder = tmp_path / "holder"
    holder.mkdir()
    (holder / "h.yaml").write_text(scope.policy("holder", team="other"))
    assert scope.mesh.cli("apply", "-f", str(holder))[0] == 0
    taking = scope.policy("bulk0999", team="bulk").replace(
        f"domain: {scope.name('bulk0999')}.", f"domain: {scope.name('holder')}."
    )
    folder = _bulk(scope, tmp_path / "set", bad=taking, at=SIZE - 1)
    before = _revision(scope)
    outputs = []
    for dry in (("--dry-run",), ()):
        status, out = scope.mesh.cli("apply", "-f", str(folder), *dry)
        assert status == 1, out[-2000:]
        refused = [line for line in out.splitlines() if " refused: " in line]
        assert len(refused) == 1, refused
        assert refused[0].startswith(f"policy/{scope.name('bulk0999')} refused: ")
        assert "is already the domain of policy" in refused[0]
        assert refused[0].endswith(f"[{folder / 'set.yaml'}, document {SIZE}]")
        assert f"1 of {SIZE} policies refused; nothing was applied" in out
        outputs.append(refused[0])
    assert outputs[0] == outputs[1]
    assert scope.policies("bulk") == {}
    assert _revision(scope) == before


def test_the_server_refuses_an_invalid_document_of_a_thousand_by_its_index(
    scope: Scope,
) -> None:
    """The list as a client other than the CLI sends it: the server validates the whole set
    before it writes, and the dry run answers the same status and fields."""
    from tests.integration.test_cli_sets import _doc, _http

    team = f"raw-{scope.tag}"
    documents = [
        _doc(scope.name(f"raw{i:04d}"), f"{scope.name(f'raw{i:04d}')}.mesh.internal", team)
        for i in range(SIZE)
    ]
    documents[700]["spec"]["endpoints"][0]["weight"] = -3  # type: ignore[index]
    with _http(scope.mesh) as http:
        start = http.get("/v1/policies").json()["revision"]
        answers = [
            http.post("/v1/apply", params=params, json=documents)
            for params in ({"dry_run": "true"}, {})
        ]
        for answer in answers:
            assert answer.status_code == 422, answer.text[:500]
            body = answer.json()
            assert body["error"]["code"] == "apply_refused" and body["applied"] is False
            paths = [f["path"] for f in body["error"]["fields"]]
            assert paths == ["[700].spec.endpoints[0].weight"], paths
        assert answers[0].json()["error"] == answers[1].json()["error"]
        assert http.get("/v1/policies").json()["revision"] == start
