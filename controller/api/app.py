"""The FastAPI application: routers, error handlers, the services and the hub on ``app.state``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from controller.api import admin, agents, endpoints, metrics, policies
from controller.api.body import DEFAULT_MAX_BODY
from controller.api.errors import install_error_handlers
from controller.api.refusals import RefusalAudit
from controller.api.screen import RefuseNul
from controller.auth import TokenStore
from controller.db.session import Database
from controller.feed import Feed
from controller.hub import Hub
from controller.metrics import ControllerMetrics, RequestMetrics
from controller.push_settings import PushSettings
from controller.quorum_monitor import QuorumMonitor
from controller.recorder import AgentRecorder
from controller.services.agent_state import AgentStateService
from controller.services.policies import PolicyService


def create_app(
    db: Database,
    push: PushSettings | None = None,
    *,
    ca_bundle: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    metrics_token: str | None = None,
) -> FastAPI:
    """``ca_bundle``: the PEM that GET /v1/ca serves (a controller with --tls), else None;
    ``max_body``: the largest request body in bytes (larger ones get 413);
    ``metrics_token``: what GET /metrics needs as its bearer token (None: open)."""
    settings = push or PushSettings()
    policy_service = PolicyService(db, agent_stale_after=settings.stale_after)
    counters = ControllerMetrics()
    hub = build_hub(db, settings, policy_service, counters)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The hub's tasks start with the first agent; stopping says goodbye to them.
        yield
        await hub.stop()

    app = FastAPI(
        title="dnsmesh controller",
        version="1",
        summary="Traffic policies for a DNS-based service mesh",
        docs_url=None,  # no third-party JS/CSS: /openapi.json is the contract
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.db = db
    app.state.max_body = max_body
    app.state.policies = policy_service
    app.state.tokens = TokenStore(db)
    app.state.refusals = RefusalAudit(db)
    app.state.hub = hub
    app.state.ca_bundle = ca_bundle
    app.state.metrics = counters
    app.state.metrics_token = metrics_token
    install_error_handlers(app)
    app.add_middleware(RefuseNul)
    app.add_middleware(RequestMetrics, metrics=counters)  # outermost: sees every status
    app.include_router(admin.router)
    app.include_router(policies.router)
    app.include_router(agents.router)
    app.include_router(endpoints.router)
    app.include_router(metrics.router)
    return app


def build_hub(
    db: Database,
    settings: PushSettings,
    policy_service: PolicyService,
    metrics: ControllerMetrics | None = None,
) -> Hub:
    """The hub with its collaborators: the feed, the agents' state, its writer, the quorum."""
    agent_state = AgentStateService(db, stale_after=settings.stale_after)
    return Hub(
        db,
        settings,
        feed=Feed(policy_service, window=settings.window, retention=settings.change_retention),
        agents=agent_state,
        recorder=AgentRecorder(
            agent_state, replica=settings.replica_id, heartbeat_s=settings.heartbeat_s
        ),
        health=QuorumMonitor(db, settings.health),
        metrics=metrics,
    )
