"""Demand-driven slices on both backends: counts that follow the reported query rate, one
revision each, the scale view, the audit rows and the pushed ``slice_scale``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from controller.db.session import Database
from controller.services.policies import PolicyService
from controller.services.scaling import ScaleService
from controller.services.served_share import ReceivedAnswers, ServedShareService, ShareSettings
from dnsmesh.protocol import AnswerCount
from dnsmesh.scaling import ScaleRule
from tests.integration.controller_support import Api
from tests.support.policies import policy_doc

SCALE = {"min": 1, "max": 3, "target_qps_per_endpoint": 10}
RULE = ScaleRule(window_s=30, hold_s=60, step_up=1)


def scaled_policy(scale: dict[str, Any] | None = SCALE) -> dict[str, Any]:
    slice_: dict[str, Any] = {"id": "edge", "match": {"client_cidrs": ["127.0.0.0/8"]}}
    slice_["groups"] = ["pool"]
    if scale is not None:
        slice_["scale"] = scale
    return policy_doc(
        "web",
        [{"address": f"127.0.40.{i}", "group": "pool"} for i in (3, 1, 2)],
        slices=[slice_],
    )


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def engine(controller_db: Database) -> tuple[ScaleService, ServedShareService, Clock]:
    clock = Clock()
    db = Database(controller_db.engine, clock=clock)
    settings = ShareSettings(bucket_s=10, scale=RULE)
    return ScaleService(db, RULE, settings.bucket_s), ServedShareService(db, settings), clock


def burst(share: ServedShareService, at: datetime, answers_per_agent: int) -> None:
    """Two agents' answer reports for slice edge, received at ``at``."""
    share.write(
        [
            ReceivedAnswers(
                agent,
                at,
                [AnswerCount(policy="web", slice="edge", endpoint="127.0.40.1", answers=n)],
            )
            for agent, n in (("agent-a", answers_per_agent), ("agent-b", answers_per_agent))
        ]
    )


def scale_audit(api: Api) -> list[dict[str, Any]]:
    items = api.get("/v1/audit?limit=100").json()["items"]
    return [e for e in items if str(e["operation"]).startswith("scale.")]


def test_counts_rise_with_the_rate_and_fall_after_the_hold(
    api: Api, controller_db: Database
) -> None:
    scaler, share, clock = engine(controller_db)
    assert api.post("/v1/policies", json=scaled_policy()).status_code == 201
    start = api.get("/v1/policies").json()["revision"]
    assert scaler.tick() == []  # no demand, at min: no write
    view = api.get("/v1/policies/web/scale", role="viewer").json()
    assert [(s["slice"], s["count"], s["revision"]) for s in view["slices"]] == [("edge", 1, None)]
    assert view["slices"][0]["endpoints"] == ["127.0.40.1"]

    # ~30-40 queries a second over the window (the target is 10 per endpoint)
    t0 = clock.now
    for ago in (25, 15, 5):
        burst(share, t0 - timedelta(seconds=ago), 200)
    ups = [scaler.tick(), scaler.tick(), scaler.tick()]
    assert [[c.count for c in round_] for round_ in ups] == [[2], [3], []]  # one step, max 3
    assert [round_[0].revision for round_ in ups[:2]] == [start + 1, start + 2]
    assert "qps > 1 x 10 per endpoint" in ups[0][0].reason
    # (the API's engine has the default 60 s window: the same answers over twice the time)
    view = api.get("/v1/policies/web/scale").json()["slices"][0]
    assert view["count"] == 3 and view["revision"] == start + 2 and 15 < view["qps"] < 21
    assert view["endpoints"] == ["127.0.40.1", "127.0.40.2", "127.0.40.3"]

    explained = api.get("/v1/explain", params={"name": "web", "client": "127.0.0.5"}).json()
    assert len(explained["candidates"]) == 3
    assert (
        "slice edge scales with demand: 3 of its endpoints answer (min 1, max 3)"
        in (explained["notes"])
    )

    # the agents get the counts: the snapshot and the change rows carry slice_scale
    service = PolicyService(controller_db)
    assert service.list_policies().slice_scale == {"web": {"edge": 3}}
    changes = service.changes_since(start)
    assert [(c.operation, c.slice_scale) for c in changes] == [
        ("scale", {"web": {"edge": 2}}),
        ("scale", {"web": {"edge": 3}}),
    ]

    # quiet: nothing before the hold has passed since the change
    clock.now = t0 + timedelta(seconds=30)
    assert scaler.tick() == []
    clock.now = t0 + timedelta(seconds=75)
    down = scaler.tick()
    assert [c.count for c in down] == [2] and "for 60 s" in down[0].reason
    assert scaler.tick() == []  # a hold again before the next step
    clock.now += timedelta(seconds=61)
    assert [c.count for c in scaler.tick()] == [1]
    assert scaler.tick() == []  # at min

    audit = scale_audit(api)
    assert [e["operation"] for e in audit] == ["scale.down", "scale.down", "scale.up", "scale.up"]
    assert {e["actor"] for e in audit} == {"scale"} and {e["target"] for e in audit} == {"web/edge"}
    assert audit[-1]["before"] == {"count": 1} and audit[-1]["after"]["count"] == 2
    assert all("qps" in e["after"]["reason"] for e in audit)


def test_bounds_changes_and_removal_are_revisions_too(api: Api, controller_db: Database) -> None:
    scaler, share, clock = engine(controller_db)
    api.post("/v1/policies", json=scaled_policy())
    for ago in (25, 15, 5):
        burst(share, clock.now - timedelta(seconds=ago), 500)
    scaler.tick()
    scaler.tick()
    assert PolicyService(controller_db).list_policies().slice_scale == {"web": {"edge": 3}}
    # a lower max brings the count in at once, whatever the rate
    lower = scaled_policy({**SCALE, "max": 2})
    assert api.put("/v1/policies/web", json=lower).status_code == 200
    assert [c.count for c in scaler.tick()] == [2]
    # the slice stops scaling: its row ends, as a revision the agents get
    assert api.put("/v1/policies/web", json=scaled_policy(None)).status_code == 200
    ended = scaler.tick()
    assert [(c.count, c.reason) for c in ended] == [(None, "ended: the slice no longer scales")]
    assert PolicyService(controller_db).list_policies().slice_scale == {}
    assert api.get("/v1/policies/web/scale").json()["slices"] == []


def test_bad_scales_are_422_naming_the_field_and_missing_policies_404(api: Api) -> None:
    for scale, field in (
        ({**SCALE, "max": 4}, "spec.slices[0].scale.max"),
        ({**SCALE, "target_qps_per_endpoint": -1}, "spec.slices[0].scale.target_qps_per_endpoint"),
        ({**SCALE, "min": 5}, "spec.slices[0].scale.min"),
    ):
        response = api.post("/v1/policies", json=scaled_policy(scale))
        assert response.status_code == 422
        assert field in {f["path"] for f in response.json()["error"]["fields"]}
    assert api.get("/v1/policies").json()["items"] == []
    assert api.get("/v1/policies/nope/scale").status_code == 404
    assert api.client.get("/v1/policies/nope/scale").status_code == 401
