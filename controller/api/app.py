"""The FastAPI application: routers, error handlers, the services and the hub on ``app.state``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from controller.agent_trust import AgentTrust, TrustSettings
from controller.api import (
    admin,
    agents,
    apply,
    drains,
    endpoints,
    events,
    explain,
    identity,
    metrics,
    policies,
    rollouts,
    scale,
    share,
)
from controller.api.body import DEFAULT_MAX_BODY
from controller.api.errors import install_error_handlers
from controller.api.refusals import RefusalAudit
from controller.api.screen import RefuseNul
from controller.auth import TokenStore
from controller.db.session import Database
from controller.feed import Feed
from controller.hub import Hub
from controller.identity_refusals import IdentityRefusals
from controller.metrics import ControllerMetrics, RequestMetrics
from controller.push_settings import PushSettings
from controller.quorum_monitor import QuorumMonitor
from controller.recorder import AgentRecorder
from controller.services.agent_state import AgentStateService
from controller.services.drains import DrainService
from controller.services.explain import ExplainService
from controller.services.policies import PolicyService
from controller.services.rollouts import RolloutService
from controller.share_monitor import ShareMonitor
from controller.webui import mount_ui


def create_app(
    db: Database,
    push: PushSettings | None = None,
    *,
    ca_bundle: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    trust: TrustSettings | None = None,
    refusals: IdentityRefusals | None = None,
    metrics_token: str | None = None,
) -> FastAPI:
    """``ca_bundle``: the PEM that GET /v1/ca serves (a controller with --tls), else None;
    ``max_body``: the largest request body in bytes (larger ones get 413); ``trust``: the
    CA that signs agent certificates and whether agents must show one (None: tokens only);
    ``refusals``: the counts of refused identities, shared with the TLS layer;
    ``metrics_token``: what GET /metrics needs as its bearer token (None: open)."""
    settings = push or PushSettings()
    policy_service = PolicyService(db, agent_stale_after=settings.stale_after)
    agent_trust = AgentTrust.build(db, trust, refusals)
    counters = ControllerMetrics()
    counters.watch_identity_refusals(agent_trust.refusals.counts)
    hub = build_hub(db, settings, policy_service, agent_trust, counters)

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
    app.state.drains = DrainService(db)
    app.state.rollouts = RolloutService(db, policy_service)
    app.state.explain = ExplainService(db)
    app.state.tokens = TokenStore(db)
    app.state.refusals = RefusalAudit(db)
    app.state.hub = hub
    app.state.ca_bundle = ca_bundle
    app.state.agent_trust = agent_trust
    app.state.metrics = counters
    app.state.metrics_token = metrics_token
    install_error_handlers(app)
    app.add_middleware(RefuseNul)
    app.add_middleware(RequestMetrics, metrics=counters)  # outermost: sees every status
    app.include_router(admin.router)
    app.include_router(policies.router)
    app.include_router(apply.router)
    app.include_router(agents.router)
    app.include_router(identity.router)
    app.include_router(endpoints.router)
    app.include_router(drains.router)
    app.include_router(rollouts.router)
    app.include_router(share.router)
    app.include_router(scale.router)
    app.include_router(explain.router)
    app.include_router(events.router)
    app.include_router(metrics.router)
    mount_ui(app)
    return app


def build_hub(
    db: Database,
    settings: PushSettings,
    policy_service: PolicyService,
    trust: AgentTrust | None = None,
    metrics: ControllerMetrics | None = None,
) -> Hub:
    """The hub with its collaborators: the feed, the agents' state, its writer, the quorum,
    who agents are (``trust``: tokens only when None) and the counters it keeps."""
    agent_state = AgentStateService(db, stale_after=settings.stale_after)
    metrics = metrics or ControllerMetrics()
    feed = Feed(policy_service, window=settings.window, retention=settings.change_retention)
    return Hub(
        db,
        settings,
        feed=feed,
        agents=agent_state,
        recorder=AgentRecorder(
            agent_state, replica=settings.replica_id, heartbeat_s=settings.heartbeat_s
        ),
        health=QuorumMonitor(db, settings.health),
        share=ShareMonitor(db, settings.share, feed.known_policies, metrics.share_drift),
        trust=trust or AgentTrust.build(db, None, None),
        metrics=metrics,
    )
