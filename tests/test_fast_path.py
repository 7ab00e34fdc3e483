"""The parse fast path (SPEC §9): yaml-rs gives exactly ruamel.yaml's results, or steps aside.

ruamel.yaml and the validator are the reference (`load_reference`); `load_config`
tries the fast path first. Every test compares the two outcomes, accepted
configuration or the list of errors, and checks that the fast path is taken where it
should be, so that a fallback on everything would fail too.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml_rs
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml.nodes import MappingNode

import spookd.config.fast as fast_module
from spookd.config import Config, ConfigInvalid, load_config
from spookd.config.fast import _safe, _typed_when_plain, load_fast
from spookd.config.load import checked_text, load_reference
from spookd.config.rules import parse_int
from spookd.config.yamlnodes import INT, STR, compose, tag

DATA = Path(__file__).parent / "data"
CORPUS = sorted((DATA / "good").iterdir()) + sorted((DATA / "bad").iterdir())


@pytest.fixture(autouse=True, scope="module", params=["whole", "in pieces"])
def _cutting(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test here runs twice: as configured, and with every device item a piece of its own."""
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "in pieces":
            patch.setattr(fast_module, "PIECE_MIN_TEXT", 0)
            patch.setattr(fast_module, "PIECE_BYTES", 1)
        yield


def _outcome(load: object, text: str | bytes) -> Config | list[str]:
    try:
        return load(text, "t.yaml")  # type: ignore[operator, no-any-return]
    except ConfigInvalid as exc:
        return [str(e) for e in exc.errors]


def _fast(text: str | bytes) -> Config | None:
    try:
        return load_fast(checked_text(text, "t.yaml"))
    except ConfigInvalid:
        return None


def _same(text: str | bytes) -> Config | None:
    """Assert both paths agree on ``text``; the fast path's answer (None if it stepped aside)."""
    reference = _outcome(load_reference, text)
    assert _outcome(load_config, text) == reference
    fast = _fast(text)
    if fast is not None:
        assert fast == reference
    return fast


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_corpus_gives_the_reference_result(path: Path) -> None:
    fast = _same(path.read_bytes())
    if path.parent.name == "good":
        assert fast is not None, "a plain valid configuration should take the fast path"
    else:
        assert fast is None


def test_a_large_configuration_takes_the_fast_path() -> None:
    lines = ["deviceMapping:", "  - hosts: [node-1, Node-2]", "    devices:"]
    for i in range(2000):
        lines += [
            f"      - resourceName: example.com/r{i % 7}",
            f'        instanceID: "{i:04d}"',
            f"        env: {{IP: 10.0.{i // 256}.{i % 256}, PORT: {8000 + i}, NAME: 'dev {i}'}}",
        ]
    text = "\n".join(lines) + "\n"
    fast = _same(text)
    assert fast is not None
    assert fast.for_node("node-2")["example.com/r3"]["0003"].env == (
        ("IP", "10.0.0.3"),
        ("NAME", "dev 3"),
        ("PORT", "8003"),
    )


def test_a_large_block_style_configuration_is_parsed_in_pieces() -> None:
    """The loop stall (issue #16): no single yaml-rs call builds the whole document."""
    lines = ["deviceMapping:", "  - hosts: [node-1]", "    devices:"]
    for i in range(5000):
        lines += [f"      - resourceName: example.com/r{i % 7}", f"        instanceID: d{i}"]
        lines += ["        env:", f"          IP: 10.0.{i // 256}.{i % 256}"]
    text = "\n".join(lines) + "\n"
    calls: list[int] = []
    loads = yaml_rs.loads

    def counted(piece: str) -> Any:
        calls.append(len(piece))
        return loads(piece)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(yaml_rs, "loads", counted)
        fast = _fast(text)
    assert fast is not None
    assert fast == load_reference(text, "t.yaml")
    assert len(fast.mappings[0].devices) == 5000
    if fast_module.PIECE_BYTES == 1:
        assert len(calls) == 1 + 5000
    else:
        # The document around the pieces, then pieces of PIECE_BYTES and at most one item more.
        assert len(calls) == 1 + -(-(len(text) - len("\n".join(lines[:3]))) // fast_module.PIECE_BYTES)
        assert max(calls) <= fast_module.PIECE_BYTES + 100


def test_a_run_holding_an_anchor_is_parsed_whole() -> None:
    text = "deviceMapping:\n  - hosts: [a]\n    devices:\n" + "".join(
        f"      - resourceName: e.com/w\n        instanceID: '{i}'\n        env: &e{i} {{K: v}}\n"
        for i in range(3)
    )
    assert fast_module._cut(text) is None
    assert _same(text) is not None


# Scalars whose meaning differs between YAML 1.1, YAML 1.2 and the two parsers.
TRICKY = [
    "5025", "0001", "0777", "0o17", "0x1F", "0X1F", "0O17", "0B1", "0b101", "1_000", "_1", "-_1", "+3",
    "-0", "00", "1.5", "1e3", "1.", ".5", ".inf", "-.Inf", ".NaN", "~", "null", "Null", "NULL", "",
    "true", "True", "TRUE", "False", "yes", "no", "on", "off", "y", "n", "Yes", "ON",
    "2001-12-14", "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10 -5", "12:30:45",
    "190:20:30", "10.0.10.215", "=", "<<", "a b", "x_y", "99999999999999999999999",
]  # fmt: skip


def _plain(s: str) -> str:
    return s


def _single(s: str) -> str:
    return f"'{s}'"


def _double(s: str) -> str:
    return f'"{s}"'


STYLES = [_plain, _single, _double]


def _device(instance: str = '"1"', env: str = "{IP: x}") -> str:
    return f"deviceMapping:\n  - hosts: [a]\n    devices:\n      - {{resourceName: e.com/w, instanceID: {instance}, env: {env}}}\n"


@pytest.mark.parametrize("style", range(len(STYLES)))
@pytest.mark.parametrize("scalar", TRICKY)
def test_tricky_scalars_mean_what_ruamel_says_in_every_place(scalar: str, style: int) -> None:
    written = STYLES[style](scalar)
    _same(_device(env=f"{{V: {written}}}"))
    _same(_device(instance=written))
    _same(_device(env=f"{{{written}: x}}"))
    _same(f"deviceMapping:\n  - hosts: [{written}]\n    devices: []\n")
    _same(f"exclusive: {written}\ndeviceMapping: []\n")


def test_quoted_numbers_take_the_fast_path_and_plain_ones_are_refused_by_the_reference() -> None:
    assert _same(_device(instance='"0001"', env='{PORT: 5025, HEX: 0x1F, MASK: "0777"}')) is not None
    refused = _outcome(load_config, _device(instance="0001"))
    assert isinstance(refused, list)
    assert refused[0].endswith(
        'instanceID is an unquoted number (0001 would lose its exact spelling); quote it: instanceID: "0001"'
    )


@pytest.mark.parametrize(
    "text",
    [
        _device(env="{IP: x, IP: y}"),  # duplicate key
        "deviceMapping: []\n---\ndeviceMapping: []\n",  # two documents
        _device(env="!!map {IP: x}"),  # a tag
        "base: &b {IP: x}\n" + _device(env="{<<: *b}"),  # a merge key
        _device(env='{IP: "a\\tb"}'),  # an escape
        _device(env="{IP: x}").replace("\n", "\r\n"),
        "%YAML 1.1\n---\n" + _device(env="{ON: yes}"),
        _device(env='{"A"\n  : b}'),  # an implicit key over two lines: libyaml refuses it
        _device(env="{V: a?b}"),  # `?` in a flow plain scalar: libyaml refuses it
        _device(env="{V: >1}"),  # a leading indicator in flow: libyaml refuses it
        _device(env="{V: 12:30}"),  # `:` in a flow plain scalar: libyaml refuses it
    ],
    ids=[
        "duplicate",
        "documents",
        "tag",
        "merge",
        "escape",
        "crlf",
        "directive",
        "split-key",
        "flow-question",
        "flow-indicator",
        "flow-colon",
    ],
)
def test_what_the_fast_path_cannot_vouch_for_goes_to_the_reference(text: str) -> None:
    assert _same(text) is None


_token = st.text(alphabet="0123456789abcdefxXoObB_+-.", min_size=1, max_size=8)


@settings(max_examples=400, deadline=None)
@given(_token)
def test_integers_yaml_rs_reads_differently_are_caught_before_parsing(token: str) -> None:
    """yaml-rs reads more spellings as integers than ruamel.yaml (0X1F, _1): the text check must see them."""
    text = f"k: {token}\n"
    try:
        loaded = yaml_rs.loads(text)
    except Exception:  # a refusal sends the text to the reference anyway
        return
    assert isinstance(loaded, dict)
    ours = loaded["k"]
    root = compose(text)
    assert isinstance(root, MappingNode)
    node = root.value[0][1]
    if type(ours) is int and not (tag(node) == INT and parse_int(node.value) == ours):
        assert not _safe(text), (token, ours, tag(node))
    if type(ours) is str and tag(node) != STR:
        # The walk asks yaml-rs to read such strings again as plain scalars.
        assert not _safe(text) or not _typed_when_plain({token}), (token, ours, tag(node))


hosts = st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,8}[a-z0-9]", fullmatch=True), min_size=1, max_size=3)
resources = st.sampled_from(["example.com/widget", "e.com/w", "skao.int/oscilloscope", "a.b/c-d"])
scalars = st.one_of(
    st.sampled_from(TRICKY),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.from_regex(r"[A-Za-z0-9./:-]{1,12}", fullmatch=True),
)
written = st.builds(lambda s, style: STYLES[style](s), scalars, st.integers(0, 2))
env_keys = st.sampled_from(["IP", "PORT", "NAME", "X_1", "_A", "ID", "DEV0_X", "TYPE2"])
devices = st.lists(
    st.tuples(resources, written, st.dictionaries(env_keys, written, max_size=3)), min_size=0, max_size=4
)


def _render(mappings: list[tuple[list[str], list[tuple[str, str, dict[str, str]]]]], flow: bool) -> str:
    out = ["deviceMapping:"]
    for names, items in mappings:
        out.append(f"  - hosts: [{', '.join(names)}]")
        out.append("    devices:" + ("" if items else " []"))
        for resource, instance, env in items:
            if flow:
                pairs = ", ".join(f"{k}: {v}" for k, v in env.items())
                out.append(f"      - {{resourceName: {resource}, instanceID: {instance}, env: {{{pairs}}}}}")
            else:
                out.append(f"      - resourceName: {resource}")
                out.append(f"        instanceID: {instance}")
                if env:
                    out.append("        env:")
                    out.extend(f"          {k}: {v}" for k, v in env.items())
    return "\n".join(out) + "\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(hosts, devices), max_size=3), st.booleans())
def test_generated_configurations_give_the_reference_result(
    mappings: list[tuple[list[str], list[tuple[str, str, dict[str, str]]]]], flow: bool
) -> None:
    _same(_render(mappings, flow))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            hosts, st.lists(st.tuples(resources, st.from_regex(r"[a-z0-9][a-z0-9.-]{0,6}", fullmatch=True)))
        ),
        min_size=1,
        max_size=3,
    )
)
def test_generated_valid_configurations_take_the_fast_path(
    mappings: list[tuple[list[str], list[tuple[str, str]]]],
) -> None:
    text = _render(
        [(h, [(r, f'"{i}"', {"IP": "10.0.0.1", "PORT": "80"}) for r, i in d]) for h, d in mappings], False
    )
    assert _same(text) is not None


MUTATED = [
    _device(env="{IP: 10.0.0.1, PORT: 80, NAME: 'a b'}"),
    "exclusive: true\ndeviceMapping:\n- hosts:\n  - a\n  devices:\n  - resourceName: e.com/w\n"
    '    instanceID: "0001"\n    env:\n      K: v\n      N: 5\n',
    # Block style without quotes or flow collections: the pieces' own shape.
    "deviceMapping:\n  - hosts: [a, b]\n    devices:\n      - resourceName: e.com/w\n        instanceID: x1\n"
    "        env:\n          IP: 10.0.0.1\n      # a comment\n      - resourceName: e.com/w\n"
    "        instanceID: x2\n\n      - instanceID: y\n        resourceName: e.com/v\n  - hosts:\n"
    "      - c\n      - d\n    devices:\n      - resourceName: e.com/w\n        instanceID: z\n"
    "        env:\n          N: 5\n",
]
PIECES = [*":-?#'\"{}[], \n|>&*@`%!.~0_xX", ": ", "- ", "\n  ", "''", '""', "0x", "1_0"]


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(MUTATED),
    st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 2), st.sampled_from(PIECES)), min_size=1, max_size=3
    ),
)
def test_mutated_configurations_give_the_reference_result(
    base: str, edits: list[tuple[int, int, str]]
) -> None:
    """Small syntax edits (indicators, quotes, indentation) must never make the paths disagree."""
    text = base
    for where, how, piece in edits:
        i = where % len(text)
        text = (text[:i] + piece + text[i:], text[:i] + text[i + 1 :], text[:i] + piece + text[i + 1 :])[how]
    _same(text)


def test_every_ruamel_resolver_is_keyed_by_a_first_character() -> None:
    """TYPED_PLAIN (what the fast path asks of each string) relies on it."""
    from spookd.config.yamlnodes import _ANY_FIRST, TYPED_PLAIN, is_typed_plain, plain_tag

    assert not _ANY_FIRST
    for scalar in TRICKY:
        assert is_typed_plain(scalar) == (plain_tag(scalar) != STR), scalar
    assert set(TYPED_PLAIN) >= set("0123456789-+.~nNtTfF")


@given(st.text(alphabet="aZ09._-!: é", max_size=70))
def test_the_fast_instance_id_check_is_the_validators(value: str) -> None:
    from spookd.config.rules import VALID_INSTANCE_ID, instance_id_problem

    assert (VALID_INSTANCE_ID.fullmatch(value) is not None) == (instance_id_problem(value) is None)


def test_instance_ids_at_the_length_limit() -> None:
    from spookd.config.rules import VALID_INSTANCE_ID, instance_id_problem

    for n in (62, 63, 64, 65):
        value = "a" * n
        assert (
            (VALID_INSTANCE_ID.fullmatch(value) is not None)
            == (instance_id_problem(value) is None)
            == (n <= 63)
        )


def _most(parsed: object, char: int) -> float:
    """The most times a regular expression (parsed by re._parser) can match ``char``; inf if unbounded."""
    c: Any = importlib.import_module("re._constants")
    total = 0.0
    for op, arg in parsed:  # type: ignore[attr-defined]
        if op is c.LITERAL:
            total += arg == char
        elif op is c.NOT_LITERAL or op is c.ANY:
            total += arg != char if op is c.NOT_LITERAL else 1
        elif op is c.IN:
            total += _in_set(arg, char)
        elif op is c.BRANCH:
            total += max(_most(branch, char) for branch in arg[1])
        elif op is c.SUBPATTERN:
            total += _most(arg[-1], char)
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT):
            _low, high, body = arg
            once = _most(body, char)
            total += 0 if once == 0 else once * (float("inf") if high is c.MAXREPEAT else high)
        elif op is not c.AT:
            raise AssertionError(f"unexpected {op} in a typed-plain expression")
    return total


def _in_set(items: list[tuple[object, object]], char: int) -> bool:
    c: Any = importlib.import_module("re._constants")
    hit = False
    negate = False
    for op, arg in items:
        if op is c.NEGATE:
            negate = True
        elif op is c.LITERAL:
            hit = hit or arg == char
        elif op is c.RANGE:
            bounds: tuple[int, int] = arg  # type: ignore[assignment]
            hit = hit or bounds[0] <= char <= bounds[1]
        elif op is c.CATEGORY:
            hit = True  # \d, \s and the like: assume the worst
        else:
            raise AssertionError(f"unexpected {op} in a character set")
    return hit != negate


def test_no_typed_plain_form_holds_two_dots() -> None:
    """The walk skips ruamel.yaml's typed-plain expressions for strings with two dots (IP addresses)."""
    from spookd.config.yamlnodes import TYPED_PLAIN

    parser: Any = importlib.import_module("re._parser")

    for first, regexp in TYPED_PLAIN.items():
        assert _most(parser.parse(regexp.pattern, regexp.flags), ord(".")) <= 1, first
    assert _most(parser.parse(r"a\.b(?:\.c)?", 0), ord(".")) == 2
    assert _most(parser.parse(r"[.x]+", 0), ord(".")) == float("inf")


def test_the_fast_paths_own_copy_of_ruamels_typed_forms_is_ruamels() -> None:
    """spookd.config.plainforms spares the fast path importing ruamel.yaml; it must say the same."""
    from ruamel.yaml.reader import Reader

    from spookd.config import plainforms
    from spookd.config.yamlnodes import TYPED_PLAIN

    assert plainforms.TYPED_PLAIN.keys() == TYPED_PLAIN.keys()
    for first, regexp in TYPED_PLAIN.items():
        copy = plainforms.TYPED_PLAIN[first]
        assert (copy.pattern, copy.flags) == (regexp.pattern, regexp.flags), first
    ours = plainforms.NON_PRINTABLE
    assert (ours.pattern, ours.flags) == (Reader.NON_PRINTABLE.pattern, Reader.NON_PRINTABLE.flags)
