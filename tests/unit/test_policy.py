"""The policy schema: what validates, what is refused, and how refusals name the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from dnsmesh.errors import PolicyError
from dnsmesh.policy import (
    Policy,
    Strategy,
    check_policy_set,
    format_duration,
    normalize_domain,
    parse_duration,
    parse_policy,
)

DESIGN_EXAMPLE: dict[str, Any] = {
    "apiVersion": "dnsmesh/v1",
    "kind": "Policy",
    "metadata": {"name": "checkout", "labels": {"team": "payments"}},
    "spec": {
        "domain": "checkout.mesh.internal",
        "ttl": 5,
        "strategy": "latency-weighted",
        "answers": 1,
        "endpoints": [
            {"address": "10.0.1.10", "weight": 90, "group": "v1"},
            {"address": "10.0.2.10", "weight": 10, "group": "v2"},
        ],
        "health": {
            "probe": {"type": "tcp", "port": 443, "interval": "5s", "timeout": "1s"},
            "outlier": {
                "consecutive_failures": 5,
                "base_ejection": "30s",
                "max_ejection_percent": 50,
            },
        },
        "slices": [
            {"id": "beta", "match": {"client_cidrs": ["10.8.0.0/16"]}, "groups": ["v2"]},
            {"id": "blocked", "match": {"client_cidrs": ["10.9.0.0/16"]}, "action": "refuse"},
        ],
        "canary": {"group": "v2", "steps": [10, 25, 50, 100], "interval": "10m", "max_loss": 0.02},
    },
}


def example(**spec: Any) -> dict[str, Any]:
    document = copy.deepcopy(DESIGN_EXAMPLE)
    document["spec"].update(spec)
    return document


def refusal(document: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(document)
    return {e.path: e.message for e in caught.value.errors}


def test_the_design_example_validates_and_round_trips() -> None:
    policy = parse_policy(DESIGN_EXAMPLE)
    assert policy.spec.strategy is Strategy.LATENCY_WEIGHTED
    assert policy.spec.health is not None and policy.spec.health.probe is not None
    assert policy.spec.health.probe.interval == 5.0
    document = policy.to_document()
    assert document["spec"]["health"]["probe"]["interval"] == "5s"
    assert document["spec"]["canary"]["interval"] == "10m"
    assert parse_policy(document) == policy


def test_defaults_fill_in_a_minimal_policy() -> None:
    policy = parse_policy(
        {
            "apiVersion": "dnsmesh/v1",
            "kind": "Policy",
            "metadata": {"name": "web"},
            "spec": {"domain": "web.example.", "endpoints": [{"address": "::1"}]},
        }
    )
    assert policy.spec.domain == "web.example"
    assert policy.spec.ttl == 30
    assert policy.spec.answers == 1
    assert policy.spec.strategy is Strategy.WEIGHTED
    assert policy.spec.endpoints[0].weight == 1


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Checkout.Mesh.Internal.", "checkout.mesh.internal"),
        ("*.API.example.com", "*.api.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("_http._tcp.svc.example", "_http._tcp.svc.example"),
    ],
)
def test_domains_are_normalized(raw: str, normalized: str) -> None:
    assert normalize_domain(raw) == normalized


@pytest.mark.parametrize(
    "raw", ["", ".", "a..b", "*", "*.", "a.*.b", "-a.example", "a" * 64 + ".example", "a b.c"]
)
def test_bad_domains_are_refused(raw: str) -> None:
    assert "spec.domain" in refusal(example(domain=raw))


@pytest.mark.parametrize(
    "raw", ["localhost", "db.localhost", "*.localhost", "x.invalid", "printer.LOCAL.", "*.local"]
)
def test_special_use_names_are_refused(raw: str) -> None:
    # The agent answers these itself before any policy (RFC 6761/6762): accepting one would
    # store a policy that no node ever serves.
    message = refusal(example(domain=raw))["spec.domain"]
    assert "special-use" in message


@pytest.mark.parametrize("raw", ["localhost.example", "mylocal", "invalid-host.example", "local.x"])
def test_names_that_only_look_special_are_accepted(raw: str) -> None:
    assert parse_policy(example(domain=raw)).spec.domain == raw


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (
            lambda d: d["spec"]["endpoints"][1].update(address="10.0.0.300"),
            "spec.endpoints[1].address",
        ),
        (lambda d: d["spec"]["endpoints"][0].update(weight=-1), "spec.endpoints[0].weight"),
        (lambda d: d["spec"].update(ttl=-5), "spec.ttl"),
        (lambda d: d["spec"].update(answers=0), "spec.answers"),
        (lambda d: d["spec"].update(strategy="random"), "spec.strategy"),
        (lambda d: d["spec"].update(endpoints=[]), "spec.endpoints"),
        (lambda d: d["spec"].update(surprise=1), "spec.surprise"),
        (lambda d: d["metadata"].update(name="Not_A_Name"), "metadata.name"),
        (lambda d: d.update(apiVersion="dnsmesh/v2"), "apiVersion"),
        (
            lambda d: d["spec"]["health"]["probe"].update(interval="5 parsecs"),
            "spec.health.probe.interval",
        ),
        (lambda d: d["spec"]["health"]["probe"].pop("port"), "spec.health.probe.port"),
        (lambda d: d["spec"]["health"]["probe"].update(timeout=0), "spec.health.probe.timeout"),
        (
            lambda d: d["spec"]["slices"][0]["match"].update(client_cidrs=["10.8.0.1/16"]),
            "spec.slices[0].match.client_cidrs[0]",
        ),
        (lambda d: d["spec"]["canary"].update(steps=[50, 10]), "spec.canary.steps"),
        (
            lambda d: d["spec"]["health"]["outlier"].update(max_ejection_percent=101),
            "spec.health.outlier.max_ejection_percent",
        ),
    ],
)
def test_an_invalid_field_is_named(mutate: Any, field: str) -> None:
    document = copy.deepcopy(DESIGN_EXAMPLE)
    mutate(document)
    assert field in refusal(document)


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        (
            {"endpoints": [{"address": "10.0.0.1"}, {"address": "10.0.0.1"}]},
            "spec.endpoints[1].address",
            "appears twice",
        ),
        ({"endpoints": [{"address": "10.0.0.1", "weight": 0}]}, "spec.endpoints", "weight above 0"),
        (
            {"slices": [{"id": "x", "match": {"client_cidrs": ["10.0.0.0/8"]}, "groups": ["v9"]}]},
            "spec.slices[0].groups",
            "group 'v9'",
        ),
        (
            {
                "slices": [
                    {"id": "x", "match": {"client_cidrs": ["10.0.0.0/8"]}},
                    {"id": "x", "match": {"client_cidrs": ["10.1.0.0/16"]}},
                ]
            },
            "spec.slices[1].id",
            "appears twice",
        ),
        (
            {
                "slices": [
                    {
                        "id": "x",
                        "match": {"client_cidrs": ["10.0.0.0/8"]},
                        "action": "refuse",
                        "groups": ["v1"],
                    }
                ]
            },
            "spec.slices[0].groups",
            "takes no groups",
        ),
        ({"canary": {"group": "nope", "steps": [100]}}, "spec.canary.group", "not a group"),
    ],
)
def test_cross_field_rules_name_the_field(spec: dict[str, Any], field: str, words: str) -> None:
    messages = refusal(example(**spec))
    assert words in messages.get(field, ""), messages


def test_every_broken_rule_is_reported_at_once() -> None:
    messages = refusal(
        example(
            endpoints=[{"address": "10.0.0.1"}, {"address": "10.0.0.1"}],
            slices=[{"id": "x", "match": {"client_cidrs": ["10.0.0.0/8"]}, "groups": ["v9"]}],
            canary=None,
        )
    )
    assert {"spec.endpoints[1].address", "spec.slices[0].groups"} <= set(messages)


def test_a_document_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(PolicyError, match="mapping"):
        parse_policy(["not", "a", "policy"])


@pytest.mark.parametrize(
    ("text", "seconds", "canonical"),
    [
        ("250ms", 0.25, "250ms"),
        ("5s", 5.0, "5s"),
        (5, 5.0, "5s"),
        ("90s", 90.0, "90s"),
        ("10m", 600.0, "10m"),
        ("1h", 3600.0, "1h"),
        ("1.5s", 1.5, "1500ms"),
    ],
)
def test_durations_parse_and_format(text: object, seconds: float, canonical: str) -> None:
    assert parse_duration(text) == seconds
    assert format_duration(seconds) == canonical


def test_a_set_may_not_repeat_a_name_or_a_domain() -> None:
    first = parse_policy(DESIGN_EXAMPLE)
    renamed = copy.deepcopy(DESIGN_EXAMPLE)
    renamed["metadata"]["name"] = "other"
    second = parse_policy(renamed)
    with pytest.raises(PolicyError, match="already the domain of policy 'checkout'"):
        check_policy_set([first, second])
    with pytest.raises(PolicyError, match="defined twice"):
        check_policy_set([first, first])
    check_policy_set([first])


def test_policies_are_immutable() -> None:
    policy = parse_policy(DESIGN_EXAMPLE)
    with pytest.raises(Exception, match="frozen"):
        policy.spec.ttl = 1  # type: ignore[misc]
    assert isinstance(policy, Policy)


@pytest.mark.parametrize("value", ["pay\x00ments", "pay\nments", "tab\there", "del\x7f"])
def test_a_label_value_with_a_control_character_is_refused(value: str) -> None:
    document = copy.deepcopy(DESIGN_EXAMPLE)
    document["metadata"]["labels"] = {"team": value}
    assert set(refusal(document)) == {"metadata.labels.team"}


def test_a_label_value_may_hold_spaces_and_non_ascii_text() -> None:
    document = copy.deepcopy(DESIGN_EXAMPLE)
    document["metadata"]["labels"] = {"team": "paiements à Zürich"}
    assert parse_policy(document).metadata.labels == {"team": "paiements à Zürich"}
