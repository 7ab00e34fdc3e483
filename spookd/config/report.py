"""Collecting a configuration's errors with their places, and the checks every part shares.

A ``Report`` belongs to one validation: each check appends a ConfigError (source,
line, column, YAML path, message) and goes on, so a user sees every problem at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from spookd.config.model import ConfigError
from spookd.config.rules import suggest
from spookd.config.yamlnodes import STR, describe, is_null, tag

T = TypeVar("T")


class Place:
    """A node's position and YAML path, remembered for later cross-checks."""

    __slots__ = ("column", "line", "path")

    def __init__(self, path: str, node: Node) -> None:
        self.path = path
        self.line = node.start_mark.line + 1
        self.column = node.start_mark.column + 1


class Report:
    """The errors found so far in one configuration from ``source``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[ConfigError] = []

    def error(self, path: str, node: Node | None, message: str) -> None:
        """Record a problem at ``node`` (the top of the file when there is none)."""
        line = node.start_mark.line + 1 if node is not None else 1
        column = node.start_mark.column + 1 if node is not None else 1
        self.errors.append(ConfigError(self.source, line, column, path, message))

    def at(self, place: Place, message: str) -> None:
        """Record a problem at a remembered place."""
        self.errors.append(ConfigError(self.source, place.line, place.column, place.path, message))

    def keys(
        self, path: str, node: MappingNode, allowed: tuple[str, ...], required: tuple[str, ...]
    ) -> dict[str, Node]:
        """The values of a mapping by key; unknown, duplicate and missing keys are errors."""
        found: dict[str, Node] = {}
        key_nodes: dict[str, Node] = {}
        suggested: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or tag(key_node) != STR:
                shown = key_node.value if isinstance(key_node, ScalarNode) else describe(key_node)
                self.error(path, key_node, f"unknown key `{shown}`{suggest(str(shown), allowed)}")
                continue
            key = key_node.value
            sub = f"{path}.{key}" if path else key
            if key in key_nodes:
                self.error(sub, key_node, f"duplicate key `{key}`; each key may appear once")
                continue
            key_nodes[key] = key_node
            if key not in allowed:
                hint = suggest(key, allowed)
                if "did you mean" in hint:
                    suggested.add(hint.split("`")[1])
                self.error(sub, key_node, f"unknown key `{key}`{hint}")
                continue
            found[key] = value_node
        for key in required:
            if key not in found and key not in key_nodes and key not in suggested:
                self.error(path, node, f"missing key `{key}`")
        return found

    def string(self, path: str, node: Node | None, what: str) -> str | None:
        """The text of a string scalar; anything else is an error with a hint to quote."""
        if node is None:
            return None
        if not isinstance(node, ScalarNode) or tag(node) != STR:
            hint = f'; quote it: "{node.value}"' if isinstance(node, ScalarNode) else ""
            self.error(path, node, f"{what} must be a string, got {describe(node)}{hint}")
            return None
        return str(node.value)

    def items(self, path: str, node: Node | None, item: Callable[[str, Node], T | None]) -> list[T]:
        """The valid items of an optional list (null is an empty list)."""
        if node is None or is_null(node):
            return []
        if not isinstance(node, SequenceNode):
            self.error(path, node, f"expected a list, got {describe(node)}")
            return []
        out = []
        for i, child in enumerate(node.value):
            value = item(f"{path}[{i}]", child)
            if value is not None:
                out.append(value)
        return out
