"""``dnsmesh apply`` decided by the server: ``?dry_run=true`` and a set applied all or none."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.integration.test_cli_client import Mesh, Scope, write

# The fixtures, re-exported: one controller per backend for this module too.
from tests.integration.test_cli_client import mesh as mesh
from tests.integration.test_cli_client import scope as scope


def _http(mesh: Mesh, role: str = "editor") -> httpx.Client:
    headers = {"Authorization": f"Bearer {mesh.tokens[role]}"}
    return httpx.Client(base_url=mesh.url, headers=headers, trust_env=False, timeout=10)


def _taking_domain(scope: Scope, word: str, of: str) -> str:
    """A policy named ``word`` that asks for the domain of policy ``of``."""
    return scope.policy(word).replace(f"domain: {scope.name(word)}.", f"domain: {scope.name(of)}.")


def test_the_write_routes_dry_run_checks_in_full_and_stores_nothing(
    scope: Scope, tmp_path: Path
) -> None:
    mesh = scope.mesh
    assert mesh.cli("apply", "-f", str(write(tmp_path / "p", a=scope.policy("alpha"))))[0] == 0
    alpha, beta = scope.name("alpha"), scope.name("beta")
    with _http(mesh) as http:
        before = http.get("/v1/policies").json()
        audit = http.get("/v1/audit", params={"limit": 1}).json()["items"]
        document = {
            "apiVersion": "dnsmesh/v1",
            "kind": "Policy",
            "metadata": {"name": beta},
            "spec": {"domain": f"{beta}.mesh.internal", "endpoints": [{"address": "127.0.9.1"}]},
        }
        created = http.post("/v1/policies", params={"dry_run": "true"}, json=document)
        assert created.status_code == 201, created.text
        assert created.headers["Dnsmesh-Dry-Run"] == "true"
        assert created.json()["metadata"]["revision"] == before["revision"] + 1  # would be

        # The same refusal as the write: the domain is alpha's.
        document["spec"]["domain"] = f"{alpha}.mesh.internal"  # type: ignore[index]
        taken = http.put(f"/v1/policies/{beta}", params={"dry_run": "true"}, json=document)
        assert taken.status_code == 409 and taken.json()["error"]["code"] == "domain_conflict"

        stale = http.delete(
            f"/v1/policies/{alpha}", params={"dry_run": "true"}, headers={"If-Match": '"999999"'}
        )
        assert stale.status_code == 412, stale.text
        deleted = http.delete(f"/v1/policies/{alpha}", params={"dry_run": "true"})
        assert deleted.status_code == 200 and deleted.json()["deleted"] == alpha

        # Nothing stored: no new revision (so nothing to push), no policy, no audit row.
        assert http.get("/v1/policies").json() == before
        assert http.get(f"/v1/policies/{beta}").status_code == 404
        assert http.get("/v1/audit", params={"limit": 1}).json()["items"] == audit


def test_dry_run_reports_what_the_real_apply_would_refuse(scope: Scope, tmp_path: Path) -> None:
    mesh = scope.mesh
    assert mesh.cli("apply", "-f", str(write(tmp_path / "p", a=scope.policy("alpha"))))[0] == 0
    folder = write(tmp_path / "q", b=_taking_domain(scope, "beta", of="alpha"))
    status, out = mesh.cli("apply", "-f", str(folder), "--dry-run")
    assert status == 1, out
    beta, alpha = scope.name("beta"), scope.name("alpha")
    assert f"policy/{beta} refused: '{alpha}.mesh.internal' is already the domain of" in out
    assert "created" not in out.replace("would be created", "")
    assert set(scope.policies()) == {alpha}


def test_a_set_with_one_refused_policy_applies_none_and_reports_every_document(
    scope: Scope, tmp_path: Path
) -> None:
    mesh = scope.mesh
    assert mesh.cli("apply", "-f", str(write(tmp_path / "p", a=scope.policy("alpha"))))[0] == 0
    folder = write(
        tmp_path / "set",
        b=scope.policy("beta"),
        c=scope.policy("gamma"),
        d=_taking_domain(scope, "delta", of="alpha"),
        e=scope.policy("epsilon"),
    )
    status, out = mesh.cli("apply", "-f", str(folder))
    assert status == 1, out
    assert set(scope.policies()) == {scope.name("alpha")}  # none of the set was applied
    for word, file in (("beta", "b"), ("gamma", "c"), ("epsilon", "e")):
        line = f"policy/{scope.name(word)} not applied (would be created)  [{folder}/{file}.yaml"
        assert line in out, out
    assert f"policy/{scope.name('delta')} refused: " in out
    assert f"[{folder}/d.yaml, document 1]" in out
    assert "1 of 4 policies refused; nothing was applied" in out

    # Once the conflict is gone the whole set goes in.
    write(folder, d=scope.policy("delta"))
    status, out = mesh.cli("apply", "-f", str(folder))
    assert status == 0, out
    words = {"alpha", "beta", "gamma", "delta", "epsilon"}
    assert set(scope.policies()) == {scope.name(w) for w in words}


def _doc(name: str, domain: str, team: str, address: str = "127.0.9.1") -> dict[str, object]:
    return {
        "apiVersion": "dnsmesh/v1",
        "kind": "Policy",
        "metadata": {"name": name, "labels": {"team": team}},
        "spec": {"domain": domain, "endpoints": [{"address": address}]},
    }


def test_the_set_endpoint_applies_in_one_transaction_all_or_none(scope: Scope) -> None:
    a, b, c, old = (scope.name(w) for w in ("a", "b", "c", "old"))
    team = f"set-{scope.tag}"
    with _http(scope.mesh) as http:
        first = http.post("/v1/apply", json=[_doc(old, f"{old}.mesh.internal", team)])
        assert first.status_code == 200, first.text
        assert [i["outcome"] for i in first.json()["items"]] == ["created"]
        start = http.get("/v1/policies").json()

        # The third takes the domain of a policy outside the set: none of them is stored.
        refused = http.post(
            "/v1/apply",
            json=[
                _doc(a, f"{a}.mesh.internal", team),
                _doc(b, f"{b}.mesh.internal", team),
                _doc(c, f"{old}.mesh.internal", team),
            ],
        )
        assert refused.status_code == 409, refused.text
        body = refused.json()
        assert body["error"]["code"] == "apply_refused" and body["applied"] is False
        assert [i["outcome"] for i in body["items"]] == ["created", "created", "refused"]
        assert body["items"][2]["error"]["code"] == "domain_conflict"
        assert body["error"]["fields"][0]["path"] == "[2].spec.domain"
        assert http.get("/v1/policies").json() == start  # no policy, no revision

        # With prune, the pruned policy goes first: its domain is free for c.
        pruning = {"prune": "true", "selector": f"team={team}"}
        wanted = [_doc(a, f"{a}.mesh.internal", team), _doc(c, f"{old}.mesh.internal", team)]
        dry = http.post("/v1/apply", params={**pruning, "dry_run": "true"}, json=wanted)
        assert dry.status_code == 200, dry.text
        assert dry.json()["applied"] is False and dry.headers["Dnsmesh-Dry-Run"] == "true"
        assert http.get("/v1/policies").json() == start
        done = http.post("/v1/apply", params=pruning, json=wanted)
        assert done.status_code == 200, done.text
        outcomes = {i["name"]: i["outcome"] for i in done.json()["items"]}
        assert outcomes == {a: "created", c: "created", old: "pruned"}
        assert outcomes == {i["name"]: i["outcome"] for i in dry.json()["items"]}
        after = http.get("/v1/policies", params={"label": f"team={team}"}).json()
        assert {p["metadata"]["name"] for p in after["items"]} == {a, c}
        assert after["revision"] == start["revision"] + 1  # the whole set: one revision

        bad = http.post("/v1/apply", json={"policies": []})  # the list itself, not an object
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
        for selector in ("team!=x", "team in (a,b)", "=x", "team"):
            wrong = http.post("/v1/apply", params={"prune": "true", "selector": selector}, json=[])
            assert wrong.status_code == 422, (selector, wrong.text)
            assert wrong.json()["error"]["fields"][0]["path"] == "selector"
        alone = http.post("/v1/apply", params={"selector": f"team={team}"}, json=wanted)
        assert alone.status_code == 422 and alone.json()["error"]["fields"][0]["path"] == "selector"
        assert http.get("/v1/policies").json()["revision"] == after["revision"]


def test_the_slice_routes_dry_run_too(scope: Scope, tmp_path: Path) -> None:
    mesh = scope.mesh
    assert mesh.cli("apply", "-f", str(write(tmp_path / "p", a=scope.policy("alpha"))))[0] == 0
    alpha = scope.name("alpha")
    slice_doc = {"id": "office", "match": {"client_cidrs": ["10.0.0.0/8"]}}
    with _http(mesh) as http:
        before = http.get(f"/v1/policies/{alpha}").json()
        created = http.post(
            f"/v1/policies/{alpha}/slices", params={"dry_run": "true"}, json=slice_doc
        )
        assert created.status_code == 201 and created.headers["Dnsmesh-Dry-Run"] == "true"
        bad = {**slice_doc, "match": {"client_cidrs": ["not-a-cidr"]}}
        refused = http.put(
            f"/v1/policies/{alpha}/slices/office", params={"dry_run": "true"}, json=bad
        )
        assert refused.status_code == 422, refused.text
        missing = http.delete(f"/v1/policies/{alpha}/slices/office", params={"dry_run": "true"})
        assert missing.status_code == 404  # the dry-run create above stored nothing
        assert http.get(f"/v1/policies/{alpha}").json() == before
