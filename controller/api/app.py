"""The FastAPI application: routers, error handlers, and the stores on ``app.state``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from controller.api import admin, agents, endpoints, policies
from controller.api.errors import install_error_handlers
from controller.auth import TokenStore
from controller.db.session import Database
from controller.hub import Hub, PushSettings
from controller.services.policies import PolicyService


def create_app(db: Database, push: PushSettings | None = None) -> FastAPI:
    hub = Hub(db, push)

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
    app.state.policies = PolicyService(db)
    app.state.tokens = TokenStore(db)
    app.state.hub = hub
    install_error_handlers(app)
    app.include_router(admin.router)
    app.include_router(policies.router)
    app.include_router(agents.router)
    app.include_router(endpoints.router)
    return app
