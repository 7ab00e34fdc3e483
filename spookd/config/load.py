"""Loading a configuration: bytes or text → YAML node tree with positions → Config.

ruamel.yaml (its C parser where installed) composes the YAML 1.2 document; every
problem before validation (size, encoding, NUL, YAML syntax, several documents) is
one error with its line and column. A configuration the fast path
(spookd.config.fast) can vouch for skips the node tree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

from spookd.config.fast import load_fast
from spookd.config.model import Config, ConfigError, ConfigInvalid

if TYPE_CHECKING:
    from ruamel.yaml.nodes import Node

# ruamel.yaml (the reference, with the validator) is imported on the first
# configuration the fast path steps aside for, not before: a daemon whose
# configurations all take the fast path never loads it (docs/design.md, "Footprint").

#: Files larger than this are refused before parsing (ConfigMaps hold at most 1 MiB).
MAX_FILE_BYTES = 64 * 1024 * 1024


def load_config(text: str | bytes, source: str) -> Config:
    """Parse and validate a configuration; raise ConfigInvalid listing every error."""
    text = checked_text(text, source)
    config = load_fast(text)
    if config is not None:
        return config
    from spookd.config.validate import validate

    return validate(compose_config(text, source), source)


def load_reference(text: str | bytes, source: str) -> Config:
    """``load_config`` by ruamel.yaml and the validator alone, without the fast path."""
    from spookd.config.validate import validate

    text = checked_text(text, source)
    return validate(compose_config(text, source), source)


def checked_text(text: str | bytes, source: str) -> str:
    """The configuration as text; raise ConfigInvalid if it is too large, not UTF-8 or has NUL."""
    if len(text) > MAX_FILE_BYTES:
        _fatal(source, 1, 1, f"the configuration is larger than {MAX_FILE_BYTES} bytes")
    if isinstance(text, bytes):
        text = _decode(text, source)
    if "\x00" in text:
        before = text[: text.index("\x00")]
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        _fatal(source, line, column, "NUL character in the configuration; is it a binary file?")
    return text


def compose_config(text: str, source: str) -> Node:
    """The configuration's YAML node tree; raise ConfigInvalid with the one problem that stops it."""
    root = _compose(text, source)
    if root is None:
        _fatal(source, 1, 1, "the configuration is empty; write `deviceMapping: []` to serve no devices")
    return root


def _fatal(source: str, line: int, column: int, message: str) -> NoReturn:
    raise ConfigInvalid([ConfigError(source, line, column, "", message)])


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = len(before) - (before.rfind(b"\n") + 1) + 1
        _fatal(source, line, column, "not valid UTF-8 text; is it a binary file?")


def _compose(text: str, source: str) -> Node | None:
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    from spookd.config.yamlnodes import compose

    try:
        return compose(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "invalid YAML"
        if exc.context and "single document" in str(exc.context):
            problem = "more than one YAML document; put everything in one document"
        line = mark.line + 1 if mark is not None else 1
        column = mark.column + 1 if mark is not None else 1
        _fatal(source, line, column, f"invalid YAML: {problem}")
    except YAMLError as exc:
        _fatal(source, 1, 1, f"invalid YAML: {str(exc).splitlines()[0] if str(exc) else exc!r}")
