"""Schema-driven fuzzing: schemathesis against a real ``dnsmesh controller`` over HTTP.

The controller runs as a process on a PostgreSQL database of its own (the stricter backend:
it refuses NUL and lone surrogates where SQLite stores them), with an admin token so writes
are exercised, and a policy with a slice so the routes below /v1/policies/{name} find one
now and then. Every operation of /openapi.json gets ``FUZZ_EXAMPLES`` generated requests
(bounded, so the run finishes in well under a minute); ``-m slow`` runs a longer campaign.
The assertion: no 5xx ever, and every response conforms to the schema where the schema
says something (content type, and the body of the documented statuses).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance

from controller.auth import TokenStore
from controller.db.engine import build_engine
from controller.db.migrate import upgrade
from controller.db.session import Database
from tests.integration.controller_support import policy_doc, temporary_postgres_database
from tests.support.controller import ControllerProcess

pytestmark = pytest.mark.postgres

FUZZ_EXAMPLES = int(os.environ.get("DNSMESH_FUZZ_EXAMPLES", "20"))
CAMPAIGN_EXAMPLES = 300
# The long-poll's wait is capped so a generated wait=30 does not hold the run for 30 s.
MAX_WAIT_S = 0.2
# A stream that never ends on its own (and takes no parameters): tests/integration/
# test_controller_events.py covers it.
ENDLESS = {"/v1/events"}


class Target:
    def __init__(self, base_url: str, secret: str) -> None:
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {secret}"}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    with temporary_postgres_database("fuzz") as url:
        engine = build_engine(url)
        try:
            upgrade(engine)
            # A name no generator will hit: DELETE /v1/tokens/{name} must not revoke it.
            name = f"fuzz-admin-{secrets.token_hex(8)}"
            _, secret = TokenStore(Database(engine)).create(name, "admin", actor="test")
        finally:
            engine.dispose()
        cwd = tmp_path_factory.mktemp("fuzz")
        with ControllerProcess(url, Path(cwd)) as controller:
            seeded = httpx.put(
                f"{controller.base_url}/v1/policies/checkout",
                json=policy_doc("checkout"),
                headers={"Authorization": f"Bearer {secret}"},
            )
            assert seeded.status_code == 201, seeded.text
            yield Target(controller.base_url, secret)
            errors = [line for line in controller.stderr_lines if "request.failed" in line]
            assert not errors, "".join(errors)


def fuzz(target: Target, mode: GenerationMode, examples: int) -> int:
    """Runs ``examples`` generated requests per operation; returns how many were sent."""
    api = schemathesis.openapi.from_url(f"{target.base_url}/openapi.json")
    sent = 0
    for result in api.get_all_operations():
        operation = result.ok()
        if operation.path in ENDLESS:
            continue

        @settings(
            max_examples=examples,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=examples <= FUZZ_EXAMPLES,  # the bounded run is the same every time
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            nonlocal sent
            sent += 1
            exercise(case, target)

        try:
            run()
        except Unsatisfiable:  # nothing to make invalid (GET /healthz has no parameters)
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as error:
            error.add_note(f"operation: {operation.label} ({mode.value})")
            raise
    return sent


def exercise(case: Any, target: Target) -> None:
    wait = case.query.get("wait") if case.query else None
    if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > MAX_WAIT_S:
        case.query["wait"] = MAX_WAIT_S
    case.call_and_validate(
        base_url=target.base_url,
        headers=target.headers,
        checks=[not_a_server_error, content_type_conformance],
        timeout=10,
    )


MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_no_operation_answers_5xx(target: Target, mode: GenerationMode) -> None:
    assert fuzz(target, mode, FUZZ_EXAMPLES) > 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_no_operation_answers_5xx_campaign(target: Target, mode: GenerationMode) -> None:
    assert fuzz(target, mode, CAMPAIGN_EXAMPLES) > 0
