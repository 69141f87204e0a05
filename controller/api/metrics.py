"""GET /metrics: the controller's Prometheus metrics (controller/metrics.py).

Readable without a token unless the controller was started with ``--metrics-token``; then
only with ``Authorization: Bearer <that token>``. It is not an API token: a scraper gets
no role, and an API token does not read metrics. Left out of /openapi.json: it is no part
of the REST contract.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client.exposition import choose_encoder

from controller.api.deps import bearer_secret, blocking, policy_store
from controller.api.errors import ApiError
from controller.errors import StoreError
from controller.hub import Hub
from controller.metrics import ControllerMetrics

router = APIRouter()
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="dnsmesh-metrics"'}


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    token: str | None = request.app.state.metrics_token
    if token is not None and not hmac.compare_digest(
        bearer_secret(request).encode(), token.encode()
    ):
        raise ApiError(
            401,
            "unauthorized",
            "GET /metrics needs Authorization: Bearer <the --metrics-token>",
            headers=_CHALLENGE,
        )
    registry: ControllerMetrics = request.app.state.metrics
    await _refresh(registry, request.app.state.hub, request)
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(registry.registry), media_type=content_type)


async def _refresh(metrics: ControllerMetrics, hub: Hub, request: Request) -> None:
    """The gauges read now: the revision and down set from the database (a scrape of a
    controller whose database is away still answers, without them), agents from the hub."""
    metrics.count_agents(len(hub.sessions), hub.settings.stale_after.total_seconds())
    await hub.share.evaluate()  # the drift gauges as of now (a database error leaves them)
    try:
        metrics.revision.set(await blocking(policy_store(request).current_revision))
        metrics.endpoints_down.set(len(await hub.down()))
    except StoreError:
        metrics.database_errors.labels("metrics").inc()
