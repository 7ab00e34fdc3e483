"""Compose YAML text into a ruamel.yaml node tree with positions (YAML 1.2)."""

from __future__ import annotations

from typing import Any

from ruamel.yaml.nodes import Node
from ruamel.yaml.resolver import VersionedResolver

try:
    from ruamel.yaml.cyaml import CParser
except ImportError:  # pragma: no cover - only without ruamel.yaml.clib
    CParser = None


def compose(text: str) -> Node | None:
    """The single document's root node, or None for an empty document."""
    if CParser is not None:
        return _CComposer(text).get_single_node()  # type: ignore[no-any-return]
    from ruamel.yaml import YAML  # pragma: no cover

    return YAML(typ="safe", pure=True).compose(text)  # type: ignore[no-any-return]  # pragma: no cover


class _CComposer(CParser, VersionedResolver):  # type: ignore[misc]
    """libyaml's parser and composer with ruamel.yaml's YAML 1.2 resolver."""

    def __init__(self, text: str) -> None:
        CParser.__init__(self, text)
        VersionedResolver.__init__(self, loader=self)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)
