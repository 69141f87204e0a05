"""The FastAPI application: routers, error handlers, and the stores on ``app.state``."""

from __future__ import annotations

from fastapi import FastAPI

from controller.api import admin, policies
from controller.api.errors import install_error_handlers
from controller.auth import TokenStore
from controller.db.session import Database
from controller.store import PolicyStore


def create_app(db: Database) -> FastAPI:
    app = FastAPI(
        title="dnsmesh controller",
        version="1",
        summary="Traffic policies for a DNS-based service mesh",
        docs_url=None,  # no third-party JS/CSS: /openapi.json is the contract
        redoc_url=None,
    )
    app.state.db = db
    app.state.policies = PolicyStore(db)
    app.state.tokens = TokenStore(db)
    install_error_handlers(app)
    app.include_router(admin.router)
    app.include_router(policies.router)
    return app
