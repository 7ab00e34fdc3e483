"""The plain scalars ruamel.yaml's YAML 1.2 resolver types, without importing ruamel.yaml.

The fast path (spookd.config.fast) asks of every string whether ruamel.yaml would
have typed it had it been written plain; importing ruamel.yaml for that question
alone would load all of it (about 2.5 MiB) into every daemon whose configurations
take the fast path. These are the expressions of ruamel.yaml 0.19's
``VersionedResolver`` for YAML 1.2 (MIT licence), by first character, and its
reader's test for characters it refuses; tests/test_fast_path.py fails as soon as
the installed ruamel.yaml's differ from them.
"""

from __future__ import annotations

import re

_VERBOSE = re.VERBOSE | re.UNICODE
# Each written inside re.compile, and combined by its .pattern.
_FLOAT = re.compile(
    r"""(?:^(?:
         [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |[-+]?\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$)""",
    _VERBOSE,
).pattern
_INT = re.compile(
    r"""(?:^(?:[-+]?0b[0-1_]+
        |[-+]?0o?[0-7_]+
        |[-+]?[0-9_]+
        |[-+]?0x[0-9a-fA-F_]+)$)""",
    _VERBOSE,
).pattern
_TIMESTAMP = re.compile(
    r"""(?:^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]
        |[0-9][0-9][0-9][0-9] -[0-9][0-9]? -[0-9][0-9]?
        (?:[Tt]|[ \t]+)[0-9][0-9]?
        :[0-9][0-9] :[0-9][0-9] (?:\.[0-9]*)?
        (?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$)""",
    _VERBOSE,
).pattern
_BOOL = re.compile(r"(?:^(?:true|True|TRUE|false|False|FALSE)$)").pattern
_NULL = re.compile(
    r"""(?:^(?: ~
        |null|Null|NULL
        | )$)""",
    _VERBOSE,
).pattern

_BY_FORM: list[tuple[str, re.Pattern[str]]] = [
    ("FTft", re.compile(_BOOL, _VERBOSE)),
    ("+-", re.compile(f"{_FLOAT}|{_INT}", _VERBOSE)),
    ("0123456789", re.compile(f"{_FLOAT}|{_INT}|{_TIMESTAMP}", _VERBOSE)),
    (".", re.compile(_FLOAT, _VERBOSE)),
    ("<", re.compile(r"(?:^(?:<<)$)", re.UNICODE)),
    ("=", re.compile(r"(?:^(?:=)$)", re.UNICODE)),
    ("!&*", re.compile(r"(?:^(?:!|&|\*)$)", re.UNICODE)),
]
#: Per first character, one expression matching every plain scalar ruamel.yaml types
#: (the empty string, a plain empty value, is null).
TYPED_PLAIN: dict[str, re.Pattern[str]] = {
    "": re.compile(_NULL, _VERBOSE),
    "N": re.compile(_NULL, _VERBOSE),
    "n": re.compile(_NULL, _VERBOSE),
    "~": re.compile(_NULL, _VERBOSE),
    **{first: regexp for firsts, regexp in _BY_FORM for first in firsts},
}

#: A character ruamel.yaml's reader refuses in a document.
NON_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
