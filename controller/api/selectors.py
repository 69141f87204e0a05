"""The ``label=KEY=VALUE`` query parameter of the list routes (policies, agents, endpoints),
and the ``selector=KEY=VALUE,...`` of POST /v1/apply."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from fastapi import Query

from controller.api.errors import ApiError
from dnsmesh.errors import FieldError
from dnsmesh.labelselector import SelectorError, parse_equality_selector

LabelQuery = Annotated[list[str] | None, Query(description="KEY=VALUE; repeat to AND")]


def label_selector(selectors: list[str] | None) -> dict[str, str]:
    """The pairs asked for; 422 naming every one that is not KEY=VALUE."""
    wanted: dict[str, str] = {}
    errors: list[FieldError] = []
    for index, selector in enumerate(selectors or []):
        key, sep, value = selector.partition("=")
        if not sep or not key:
            errors.append(FieldError(f"label[{index}]", f"{selector!r} is not KEY=VALUE"))
        wanted[key] = value
    if errors:
        raise ApiError(422, "invalid_request", "a label filter is not KEY=VALUE", errors)
    return wanted


def has_labels(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in wanted.items())


def equality_selector(text: str) -> dict[str, str]:
    """``selector=KEY=VALUE,...`` (Kubernetes' equality form); 422 naming it otherwise."""
    try:
        return parse_equality_selector(text)
    except SelectorError as error:
        raise ApiError(
            422, "invalid_request", f"selector: {error}", [FieldError("selector", str(error))]
        ) from None
