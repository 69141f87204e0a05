"""Rollouts on both backends: the engine's transitions, the REST routes, revisions, audit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from controller.db.session import Database
from controller.services.endpoint_health import EndpointHealthService, Received
from controller.services.rollouts import RolloutService
from dnsmesh.protocol import EndpointReport
from tests.integration.controller_support import Api
from tests.support.policies import policy_doc

CANARY = {"group": "v2", "steps": [10, 50, 100], "interval": "5s", "max_loss": 0.1}


def canary_policy(name: str = "web", canary: dict[str, Any] | None = None) -> dict[str, Any]:
    document = policy_doc(
        name,
        [
            {"address": "127.0.30.1", "weight": 1, "group": "v1"},
            {"address": "127.0.30.2", "weight": 1, "group": "v2"},
        ],
    )
    document["spec"]["canary"] = canary or CANARY
    return document


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def engine(controller_db: Database) -> tuple[RolloutService, EndpointHealthService, Clock]:
    clock = Clock()
    db = Database(controller_db.engine, clock=clock)
    return RolloutService(db), EndpointHealthService(db), clock


def report(health: EndpointHealthService, clock: Clock, loss: float, agents: int = 2) -> None:
    health.write_reports(
        [
            Received(
                f"agent-{i}",
                clock.now,
                [EndpointReport(address="127.0.30.2", latency_ms=3.0, loss=loss, state="healthy")],
            )
            for i in range(agents)
        ]
    )


def rollout_audit(api: Api) -> list[dict[str, Any]]:
    items = api.get("/v1/audit?limit=100").json()["items"]
    return [e for e in items if str(e["operation"]).startswith("rollout.")]


def test_the_engine_starts_steps_and_rolls_back(api: Api, controller_db: Database) -> None:
    service, health, clock = engine(controller_db)
    assert api.post("/v1/policies", json=canary_policy()).status_code == 201
    assert api.get("/v1/policies/web/rollout").status_code == 409  # not started yet

    started = service.tick()
    assert [(t.state, t.share) for t in started] == [("progressing", 10)]
    assert service.tick() == []  # nothing due: no write
    status = api.get("/v1/policies/web/rollout", role="viewer").json()
    assert (status["step"], status["share"], status["state"]) == (1, 10, "progressing")
    assert 0 < status["next_step_in_s"] <= 5

    clock.now += timedelta(seconds=6)
    assert service.tick() == []  # due, but no reports yet: it waits
    report(health, clock, loss=0.0)
    stepped = service.tick()
    assert [(t.state, t.share) for t in stepped] == [("progressing", 50)]
    assert "healthy" in stepped[0].reason

    report(health, clock, loss=0.5)
    rolled = service.tick()
    assert [(t.state, t.share) for t in rolled] == [("rolled_back", 0)]
    assert "loss" in rolled[0].reason
    status = api.get("/v1/policies/web/rollout").json()
    assert status["health"]["breach"] and status["decided_with"]["max_loss"] == 0.5

    # each transition one revision, with a change row the agents get
    revision = api.get("/v1/policies").json()["revision"]
    assert revision == 4
    audit = rollout_audit(api)
    assert [e["operation"] for e in audit] == ["rollout.rollback", "rollout.step", "rollout.start"]
    assert {e["actor"] for e in audit} == {"rollout"}
    assert all(e["after"]["reason"] for e in audit)


def test_a_complete_rollout_is_still_watched_until_the_canary_is_removed(
    api: Api, controller_db: Database
) -> None:
    service, health, clock = engine(controller_db)
    api.post("/v1/policies", json=canary_policy())
    service.tick()
    for share in (50, 100):
        clock.now += timedelta(seconds=6)
        report(health, clock, loss=0.0)
        assert [t.share for t in service.tick()] == [share]
    assert api.get("/v1/policies/web/rollout").json()["state"] == "complete"
    report(health, clock, loss=0.5)
    rolled = service.tick()
    assert [(t.state, t.share) for t in rolled] == [("rolled_back", 0)]
    assert "loss 0.500" in rolled[0].reason
    assert rollout_audit(api)[0]["after"]["reason"] == rolled[0].reason
    # the operator removes the canary: the rollout ends and nothing is watched any more
    plain = canary_policy()
    del plain["spec"]["canary"]
    api.put("/v1/policies/web", json=plain)
    assert [t.state for t in service.tick()] == ["ended"]
    report(health, clock, loss=0.9)
    assert service.tick() == []


def test_operator_commands(api: Api, controller_db: Database) -> None:
    service, _health, _clock = engine(controller_db)
    api.post("/v1/policies", json=canary_policy())
    service.tick()
    paused = api.post("/v1/policies/web/rollout/pause", role="editor")
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    assert api.post("/v1/policies/web/rollout/pause").status_code == 409
    assert api.post("/v1/policies/web/rollout/resume").json()["state"] == "progressing"
    promoted = api.post("/v1/policies/web/rollout/promote").json()
    assert (promoted["state"], promoted["share"]) == ("promoted", 100)
    aborted = api.post("/v1/policies/web/rollout/abort").json()
    assert (aborted["state"], aborted["share"]) == ("aborted", 0)
    assert api.post("/v1/policies/web/rollout/resume").json()["share"] == 10  # from the start
    assert api.post("/v1/policies/web/rollout/promote", role="viewer").status_code == 403
    assert api.client.post("/v1/policies/web/rollout/promote").status_code == 401
    audit = rollout_audit(api)
    assert audit[0]["actor"] == "admin-token" and audit[0]["operation"] == "rollout.resume"


def test_missing_policies_no_rollout_and_bad_commands(api: Api) -> None:
    assert api.get("/v1/policies/nope/rollout").json()["error"]["code"] == "not_found"
    assert api.post("/v1/policies/nope/rollout/pause").status_code == 404
    plain = canary_policy("plain")
    del plain["spec"]["canary"]
    api.post("/v1/policies", json=plain)
    for path in ("/v1/policies/plain/rollout", "/v1/policies/plain/rollout/promote"):
        response = api.get(path) if path.endswith("rollout") else api.post(path)
        assert response.status_code == 409 and response.json()["error"]["code"] == "no_rollout"
    assert api.post("/v1/policies/plain/rollout/undo").status_code == 409
    assert api.post("/v1/policies/plain/rollout/sideways").status_code == 422


def test_a_canary_change_restarts_and_undo_puts_the_document_back(
    api: Api, controller_db: Database
) -> None:
    service, _health, _clock = engine(controller_db)
    api.post("/v1/policies", json=canary_policy())
    service.tick()
    api.post("/v1/policies/web/rollout/promote")
    changed = canary_policy(canary={**CANARY, "steps": [5, 100]})
    assert api.put("/v1/policies/web", json=changed).status_code == 200
    restarted = service.tick()
    assert [(t.share, t.reason) for t in restarted] == [
        (5, "started: canary group or canary changed")
    ]
    undone = api.post("/v1/policies/web/rollout/undo")
    assert undone.status_code == 200
    assert api.get("/v1/policies/web").json()["spec"]["canary"]["steps"] == [10, 50, 100]
    assert service.tick()[0].share == 10
    # the canary removed: the rollout ends, as a revision
    plain = canary_policy()
    del plain["spec"]["canary"]
    api.put("/v1/policies/web", json=plain)
    assert [t.state for t in service.tick()] == ["ended"]
    assert api.get("/v1/policies/web/rollout").status_code == 409


def test_split_and_canary_together_is_422(api: Api) -> None:
    document = canary_policy()
    document["spec"]["split"] = {"shares": {"v1": 50, "v2": 50}}
    response = api.post("/v1/policies", json=document)
    assert response.status_code == 422
    assert "spec.split" in {f["path"] for f in response.json()["error"]["fields"]}


def test_explain_follows_the_rollout_share(api: Api, controller_db: Database) -> None:
    """Explain compiles a canary policy as the agents do: nothing to the canary before the
    rollout starts, then its share, with the rollout's step and state shown."""
    service, _health, _clock = engine(controller_db)
    api.post("/v1/policies", json=canary_policy())

    def explained() -> dict[str, Any]:
        response = api.get("/v1/explain?name=web&client=127.0.0.9", role="viewer")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    before = explained()
    assert before["rollout"] == {"group": "v2", "share": 0, "state": None}
    assert before["distribution"]["A"]["shares"] == {"127.0.30.1": 1.0}

    service.tick()  # starts at 10 %
    after = explained()
    assert after["rollout"]["share"] == 10 and after["rollout"]["state"] == "progressing"
    odds = after["distribution"]["A"]["shares"]
    assert abs(odds.get("127.0.30.2", 0.0) - 0.10) < 0.03, odds
