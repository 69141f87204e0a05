"""YAML text to plain Python data, as PyYAML's safe loader gives it, a third faster.

PyYAML with libyaml parses and composes in C, but builds the Python objects in Python, one
generic ``construct_object`` per node (its memo, its recursion guard, a generator per
mapping for recursive structures), and resolves every plain scalar's implicit tag with
regular expressions. That was the largest part of an agent's start with 100,000 policies
from files (1,000 policies: 61-68 ms -> 40 ms here). Policy documents are plain mappings,
sequences and scalars, so:

* ``construct_document`` builds them in one direct pass: a ``str`` scalar is its value,
  other scalars go to the safe constructor of their tag, and a mapping or a sequence built
  once is shared by every alias of it (as PyYAML does, so an alias bomb stays linear). A
  document with anything else (merge keys ``<<``, ``!!set``, ``!!omap``, a recursive alias,
  an unhashable key, a tag the safe loader refuses) is built by PyYAML's own constructor,
  which gives the same data or the same error as before.
* ``resolve`` remembers the tag of the short plain scalars it has seen (keys and enum
  values repeat in every document): the tag depends on the text alone.

tests/unit/test_yamldocs.py checks the data equals PyYAML's for documents of every kind.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, ClassVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"

# Plain scalars up to this length have their resolved tag remembered, up to this many.
_CACHED_LENGTH = 64
_CACHE_SIZE = 20_000

# libyaml's parser when PyYAML was built with it (1,000 policies: 0.19 s instead of 1.6 s).
_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Error = yaml.YAMLError


class _NotPlain(Exception):
    """A node this module leaves to PyYAML's constructor."""


class PlainLoader(_Base):  # type: ignore[misc,valid-type]
    """The safe loader, faster on plain data (see the module's docstring)."""

    # Shared by every load (the tag depends on the text alone), in any thread: a dict's
    # get and set are each atomic under the GIL.
    _resolved: ClassVar[dict[tuple[str, tuple[bool, bool]], str]] = {}

    def resolve(self, kind: type[Node], value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is not ScalarNode or not implicit[0] or len(value) > _CACHED_LENGTH:
            return str(super().resolve(kind, value, implicit))
        key = (value, implicit)
        tag = self._resolved.get(key)
        if tag is None:
            tag = str(super().resolve(kind, value, implicit))
            if len(self._resolved) < _CACHE_SIZE:
                self._resolved[key] = tag
        return tag

    def construct_document(self, node: Node) -> Any:
        try:
            return self._build(node, {}, set())
        except _NotPlain:
            return super().construct_document(node)

    def _build(self, node: Node, built: dict[int, Any], open_: set[int]) -> Any:
        if isinstance(node, ScalarNode):
            if node.tag == _STR:
                return node.value
            constructor = self.yaml_constructors.get(node.tag)
            if constructor is None:
                raise _NotPlain
            return constructor(self, node)
        key = id(node)
        if key in built:
            return built[key]
        if key in open_:
            raise _NotPlain  # recursive: PyYAML builds those with its generators
        open_.add(key)
        data: Any
        if isinstance(node, SequenceNode) and node.tag == _SEQ:
            data = [self._build(item, built, open_) for item in node.value]
        elif isinstance(node, MappingNode) and node.tag == _MAP:
            data = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE:
                    raise _NotPlain
                name = self._build(key_node, built, open_)
                if type(name) is not str and not isinstance(name, Hashable):
                    raise _NotPlain  # PyYAML's constructor says which key, and where
                data[name] = self._build(value_node, built, open_)
        else:
            raise _NotPlain
        open_.discard(key)
        built[key] = data
        return data


def load_documents(text: str) -> list[Any]:
    """Every document of ``text`` (None for an empty one); ``Error`` if it is not YAML."""
    return list(yaml.load_all(text, Loader=PlainLoader))
