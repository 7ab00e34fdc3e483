"""Compose YAML text into a ruamel.yaml node tree with positions (YAML 1.2 core schema),
and read a node's type."""

from __future__ import annotations

import re
from typing import Any

from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.resolver import VersionedResolver
from ruamel.yaml.tag import Tag

try:
    from ruamel.yaml.cyaml import CParser  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - only without ruamel.yaml.clib
    CParser = None


def _shared_tag(name: str) -> Tag:
    """One Tag object per tag name, its string form computed once.

    ruamel.yaml wraps every node's tag in a new Tag whose string form is decoded
    again on each node; sharing them halves the time to compose a large document.
    """
    tag = Tag(suffix=name)
    _ = tag.trval
    return tag


_STR = _shared_tag("tag:yaml.org,2002:str")
_SEQ = _shared_tag("tag:yaml.org,2002:seq")
_MAP = _shared_tag("tag:yaml.org,2002:map")


def _implicit_table() -> dict[str, list[tuple[Tag, Any]]]:
    """ruamel.yaml's YAML 1.2 implicit resolvers by first character, resolved once.

    ruamel.yaml looks the version up again for every scalar, and reaches each
    regular expression through a lazy wrapper; for a 1 MiB configuration that cost
    more than parsing itself.
    """
    table = VersionedResolver(version=(1, 2)).versioned_resolver
    return {
        key: [(_shared_tag(str(tag)), re.compile(regexp.pattern, regexp.flags)) for tag, regexp in rules]
        for key, rules in table.items()
    }


_IMPLICIT: dict[str, list[tuple[Tag, Any]]] = _implicit_table()
_ANY_FIRST: list[tuple[Tag, Any]] = _IMPLICIT.get(None, [])  # type: ignore[call-overload]
#: Per first character, one expression matching every plain scalar ruamel.yaml types
#: (ruamel.yaml's YAML 1.2 table has no rule for any first character; the fast path's
#: tests would fail if it grew one, since this table would then miss typed strings).
TYPED_PLAIN: dict[str, re.Pattern[str]] = {
    key: re.compile("|".join(f"(?:{r.pattern})" for _, r in rules), rules[0][1].flags)
    for key, rules in _IMPLICIT.items()
    if key is not None and rules
}


def is_typed_plain(value: str) -> bool:
    """Whether ruamel.yaml would give ``value``, written as a plain scalar, a tag other than str."""
    typed = TYPED_PLAIN.get(value[:1])
    return typed is not None and typed.match(value) is not None


def plain_tag(value: str) -> str:
    """The tag ruamel.yaml gives ``value`` written as a plain (unquoted) scalar."""
    for found, regexp in _IMPLICIT.get(value[:1], _ANY_FIRST):
        if regexp.match(value):
            return str(found.trval)
    return STR


def compose(text: str) -> Node | None:
    """The single document's root node, or None for an empty document."""
    if CParser is not None:
        return _CComposer(text).get_single_node()  # type: ignore[no-any-return]
    from ruamel.yaml import YAML  # pragma: no cover

    return YAML(typ="safe", pure=True).compose(text)  # type: ignore[no-any-return]  # pragma: no cover


class _CComposer(CParser):  # type: ignore[misc]
    """libyaml's parser and composer with a fixed YAML 1.2 core-schema resolver."""

    def resolve(self, kind: Any, value: str, implicit: tuple[bool, bool]) -> Tag:
        if kind is ScalarNode:
            if implicit[0]:
                for tag, regexp in _IMPLICIT.get(value[:1], _ANY_FIRST):
                    if regexp.match(value):
                        return tag
            return _STR
        if kind is SequenceNode:
            return _SEQ
        if kind is MappingNode:
            return _MAP
        return _STR

    def descend_resolver(self, *_: Any) -> None:
        return None

    def ascend_resolver(self, *_: Any) -> None:
        return None


STR = "tag:yaml.org,2002:str"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
BOOL = "tag:yaml.org,2002:bool"
_TYPE_NAMES = {
    BOOL: "a boolean",
    FLOAT: "a floating-point number",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "a date",
    INT: "a number",
    STR: "a string",
}


def tag(node: Node) -> str:
    """The node's resolved tag as a string."""
    found = node.ctag
    return found if isinstance(found, str) else str(found.trval)


def is_null(node: Node) -> bool:
    """Whether ``node`` is a null scalar (``~``, ``null`` or nothing)."""
    return isinstance(node, ScalarNode) and tag(node).endswith("null")


def describe(node: Node) -> str:
    """What the node is, for a message: ``a list``, ``a boolean``, ``a date``."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _TYPE_NAMES.get(tag(node), f"a value tagged {tag(node)}")


def dump_documents(objects: list[dict[str, Any]]) -> str:
    """Objects as YAML documents, each after a ``---`` line (for ``kubectl apply -f -``)."""
    import io

    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.explicit_start = True
    yaml.width = 4096
    yaml.sort_base_mapping_type_on_output = False  # type: ignore[assignment]
    out = io.StringIO()
    yaml.dump_all(objects, out)
    return out.getvalue()
