"""Parsed policies share what they can: each model's set of given fields (dnsmesh.policy)."""

from __future__ import annotations

from dnsmesh.policy import parse_policy
from tests.support.policies import policy_doc


def test_policies_given_the_same_fields_share_one_set_and_copies_do_not_touch_it() -> None:
    a = parse_policy(policy_doc("a", [{"address": "10.0.0.1", "weight": 3}]))
    b = parse_policy(policy_doc("b", [{"address": "10.0.0.2", "weight": 4}]))
    assert a.spec.endpoints[0].model_fields_set == {"address", "weight"}
    assert (
        a.spec.endpoints[0].__pydantic_fields_set__ is b.spec.endpoints[0].__pydantic_fields_set__
    )
    assert a.__pydantic_fields_set__ is b.__pydantic_fields_set__
    shared = set(a.spec.endpoints[0].model_fields_set)
    moved = a.spec.endpoints[0].model_copy(update={"priority": 2})
    assert moved.model_fields_set == {"address", "weight", "priority"}
    assert a.spec.endpoints[0].model_fields_set == shared  # the shared set is unchanged
    assert a.to_document() == parse_policy(a.to_document()).to_document()
