"""dnsmesh.jsonpieces reads what json.loads reads, and refuses what it refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsmesh.jsonpieces import load_object

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), JSON, max_size=6), st.sampled_from([None, 0, 2]))
def test_any_object_reads_as_json_loads_reads_it(document: dict[str, Any], indent: Any) -> None:
    text = json.dumps(document, indent=indent)
    assert load_object(text) == json.loads(text) == document


@pytest.mark.parametrize(
    "text",
    [
        ' {"a" : [ 1 , {"b": [ ]} ] , "c" : { } }\n',
        '{"probers": {"endpoints": [{"address": "10.0.0.1", "agents": ["x"]}]}}',
        '{"a": 1, "a": 2}',  # the last one wins, as json.loads has it
        '{"n": NaN, "i": -Infinity, "u": "\\u00e9\\ud83d\\ude00"}',
        "{}",
    ],
)
def test_spacing_nesting_duplicates_and_escapes(text: str) -> None:
    loaded, expected = load_object(text), json.loads(text)
    assert json.dumps(loaded, sort_keys=True) == json.dumps(expected, sort_keys=True)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[1, 2]",  # not an object
        '{"a": [1, 2}',
        '{"a": [1 2]}',
        '{"a": 1,}',
        '{"a": [1,]}',
        '{"a" 1}',
        "{a: 1}",
        '{"a": 1} x',
        '{"a": 1}{}',
        '{"a": [1, 2]',
        '{"a": "unterminated}',
    ],
)
def test_what_is_not_one_json_object_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        load_object(text)
