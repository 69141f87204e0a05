"""Refused identities: every one counted, the log lines bounded per reason."""

from __future__ import annotations

import logging

import pytest

from controller.identity_refusals import LOG_BURST, IdentityRefusals, Refusal


def test_a_flood_of_refusals_is_counted_whole_and_logged_within_the_burst(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    refusals = IdentityRefusals(clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="dnsmesh.controller.identity"):
        for _ in range(1000):
            refusals.note(Refusal.OTHER_CA, "unable to get local issuer certificate")
        refusals.note(Refusal.REVOKED, "revoked")  # another reason has its own budget
    assert refusals.counts()["other_ca"] == 1000 and refusals.counts()["revoked"] == 1
    lines = [
        r.__dict__["dnsmesh_fields"] for r in caplog.records if r.getMessage() == "identity.refused"
    ]
    assert len(lines) == LOG_BURST + 1  # the burst of other_ca, then the revoked one
    assert lines[-1] == {"reason": "revoked", "error": "revoked"}

    # Once the bucket has refilled, the next line says how many were left out.
    now[0] = 1.0
    with caplog.at_level(logging.WARNING, logger="dnsmesh.controller.identity"):
        caplog.clear()
        refusals.note(Refusal.OTHER_CA, "again")
    (after,) = [r.__dict__["dnsmesh_fields"] for r in caplog.records]
    assert after["suppressed"] == 1000 - LOG_BURST
