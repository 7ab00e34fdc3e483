"""The fast path for accepted configurations (SPEC §9): yaml-rs instead of ruamel.yaml.

ruamel.yaml stays the reference: for YAML 1.2 semantics and for every error and its
position. This module only vouches for configurations it can prove ruamel.yaml and
the validator would accept with the same result; for anything else (an error,
something unusual, any doubt) it answers None and the reference decides.

What yaml-rs resolves differently from ruamel.yaml's YAML 1.2 resolver, and how each
difference is caught (tests/test_fast_path.py pins every one against both parsers):

- plain scalars ruamel types but yaml-rs leaves a string (``=``, ``<<``, any
  future gap): every string that ruamel would type if it were plain is parsed
  again by yaml-rs as a plain scalar, in one batch; a string there means it may
  have been plain, and the reference decides;
- plain scalars yaml-rs types as integers and ruamel leaves strings (``0X1F``,
  ``0O17``, ``0B1``, ``_1``): the text is searched for such tokens first;
- dates and times (yaml-rs makes date, datetime and time objects; ruamel tags
  dates, and leaves ``12:30:45`` a string): never valid here, so the reference
  decides;
- tags, merge keys, directives, document markers, escapes, tabs, carriage returns,
  the YAML 1.1 line breaks and characters ruamel refuses: the text is searched for
  them first;
- duplicate keys: yaml-rs refuses them like the validator does;
- plain scalars libyaml (ruamel.yaml's parser) refuses and YAML 1.2 allows: `:`,
  `?` or `#` inside a plain scalar in a flow collection (``{V: 12:30}``, ``{V: a?}``),
  or a leading indicator (``{V: >1}``): such strings go to the reference;
- block scalars (``|``, ``>``), whose indentation rules the two read differently.

Only the fields of SPEC §1 (hosts, resourceName, instanceID, env, exclusive) take
the fast path; a device with any SPEC §10 field goes to the reference.
"""

from __future__ import annotations

import re
from typing import Any

import yaml_rs

from spookd.config.crosscheck import prefix_collisions
from spookd.config.model import Config, Device, DeviceMapping
from spookd.config.plainforms import NON_PRINTABLE, TYPED_PLAIN
from spookd.config.rules import (
    VALID_INSTANCE_ID,
    env_key_problem,
    extended_resource_name_problem,
    node_name_ok,
)

#: Characters that send a configuration to the reference: tags, directives,
#: escapes, block scalars, tabs and odd line breaks, and what ruamel.yaml's reader refuses.
_UNSAFE_CHARS = "!%\\|>\t\r\x85\u2028\u2029\ufeff"
#: Pieces of text that do: merge keys; the integer forms yaml-rs reads but ruamel.yaml
#: does not (0X1F, 0O17, 0B1, and plain scalars starting with `_`); document markers;
#: a `:` after a space or line break (libyaml wants an implicit key on one line).
_UNSAFE_PIECES = (
    "<<", "0X", "0O", "0B", *(c + "_" for c in " \n[{,:?"), "\n---", "\n...", "\n:", " :",
)  # fmt: skip
_UNSAFE_START = ("_", "---", "...", ":")
#: For ASCII text the same in one pass over bytes: every byte but these is unsafe...
_SAFE_ASCII = bytes(c for c in range(0x20, 0x7F) if chr(c) not in _UNSAFE_CHARS) + b"\n"
#: ...and after mapping separators to 1, X, O and B to 2 and `:` to 3, so are these pieces.
_FOLD = bytes.maketrans(b" \n[{,?XOB:", b"\x01" * 6 + b"\x02" * 3 + b"\x03")
#: Each with a byte it needs in the text, or None.
_UNSAFE_FOLDED = (
    (b"<<", b"<"), (b"0\x02", None), (b"\x01_", b"_"), (b"\x03_", b"_"),
    (b"\x01---", None), (b"\x01...", None), (b"\x01\x03", None),
)  # fmt: skip
#: A string starting with an indicator may be a plain scalar libyaml refuses and YAML 1.2 allows.
_INDICATORS = frozenset("-?:,[]{}#&*!|>'\"%@`")
_TOP_KEYS = frozenset({"deviceMapping", "exclusive"})
_MAPPING_KEYS = {"hosts": None, "devices": None}.keys()


#: A text at least this long is parsed in pieces of about PIECE_BYTES (see ``_cut``).
PIECE_MIN_TEXT = 128 * 1024
PIECE_BYTES = 32 * 1024
#: What a cut-out run of device items may not hold: anchors and aliases, whose names
#: would resolve differently with the run out of the document.
_PIECE_UNSAFE = "&*"
_SENTINEL = "spookd-piece-"
_FIRST_DEVICE = re.compile(r"^( *)- (?:resourceName|instanceID|env):", re.MULTILINE)


def load_fast(text: str) -> Config | None:
    """The configuration ``text`` describes, when the fast path can vouch for it; else None."""
    if not _safe(text):
        return None
    cut = _cut(text) if len(text) >= PIECE_MIN_TEXT else None
    outline, pieces = cut or (text, {})
    walk = _Walk(flow="{" in text or "[" in text, pieces=pieces)
    try:
        data = yaml_rs.loads(outline)
    except Exception:
        return None
    try:
        config = walk.top(data)
    except _Doubt:
        return None
    if walk.pieces or (walk.maybe_plain and not _typed_when_plain(walk.maybe_plain)):
        return None
    return config


def _cut(text: str) -> tuple[str, dict[str, str]] | None:
    """``text`` with long runs of device items cut out, each left as one sentinel item; the pieces.

    yaml-rs builds the Python objects of a whole text in one call holding the GIL: a
    loop stall of ~6 ms for 1 MiB. Parsed in pieces, each call holds it for a piece.
    Why the pieces mean what the whole text means (docs/design.md, "Footprint"):

    - A cut falls only at a line opening an item of a block sequence at the device
      items' indentation, in a run of such items that no other line at that indentation
      or less interrupts (a comment either): a plain scalar cannot continue onto it.
    - Only a sentinel the walk meets as an item of a device list counts, and each must
      be met once: so the first piece of a run starts where the parser stands between
      two items of a block sequence, as the sentinel did.
    - A piece holds only lines at the items' indentation or deeper, which parse alone
      as they do in place; so each piece parsed without an error ends where the next
      starts, between two items: a quoted scalar or flow collection open across a cut
      makes the piece before it end inside it, which yaml-rs refuses.
    - A run holding an anchor or alias is not cut, and any refusal sends the text to
      the whole-document parse; tests/test_fast_path.py runs every test both ways.
    """
    first = _FIRST_DEVICE.search(text)
    if first is None or _SENTINEL in text:
        return None
    depth = len(first.group(1))
    opener = " " * depth + "- "
    next_item = "\n" + opener
    # A line starting at a column up to the items' own that opens no item (a comment too).
    # (Searched for from the line break before it: a literal first character is a fast scan.)
    breaker = re.compile(rf"\n(?!{opener}) {{0,{depth}}}[^ \n]")
    out: list[str] = []
    pieces: dict[str, str] = {}
    kept = 0
    run = piece = first.start()
    # Each step looks at most PIECE_BYTES and an item ahead, so no search holds the GIL long.
    while True:
        ahead = text.find(next_item, piece + PIECE_BYTES - 1)
        limit = len(text) if ahead == -1 else ahead + 1
        stop = breaker.search(text, piece - 1, limit)
        end = limit if stop is None else stop.start() + 1
        if stop is None or piece != run:
            # The run goes on past this piece, or was cut before: this piece is cut out too.
            body = text[piece:end]
            if any(c in body for c in _PIECE_UNSAFE):
                return None
            name = f"{_SENTINEL}{len(pieces)}"
            pieces[name] = body
            out += (text[kept:piece], opener, name, "\n")
            kept = end
        if stop is None and ahead != -1:
            piece = limit
            continue
        following = -1 if stop is None else text.find(next_item, end)
        if following == -1:
            break
        run = piece = following + 1
    if not pieces:
        return None
    out.append(text[kept:])
    return "".join(out), pieces


def _safe(text: str) -> bool:
    if text.startswith(_UNSAFE_START):
        return False
    if text.isascii():
        raw = text.encode("ascii")
        if raw.translate(None, _SAFE_ASCII):
            return False
        folded = raw.translate(_FOLD)
        # A search for two bytes costs a pass over the text, one for a single byte is a
        # memchr: the pieces with a rare byte are looked for only when that byte occurs.
        return not any(piece in folded for piece, gate in _UNSAFE_FOLDED if gate is None or gate in raw)
    if any(c in text for c in _UNSAFE_CHARS) or NON_PRINTABLE.search(text):
        return False
    return not any(piece in text for piece in _UNSAFE_PIECES)


def _typed_when_plain(values: set[str]) -> bool:
    """Whether yaml-rs types each of ``values`` written plain: then each must have been quoted."""
    ordered = sorted(values)
    try:
        again = yaml_rs.loads("k:\n" + "".join(f"- {v}\n" for v in ordered))
    except Exception:
        return False
    typed = again.get("k") if isinstance(again, dict) else None
    return isinstance(typed, list) and len(typed) == len(ordered) and not any(type(v) is str for v in typed)


class _Doubt(Exception):
    """The fast path cannot vouch for this configuration."""


class _Walk:
    """SPEC §1 over yaml-rs's plain data; any doubt raises _Doubt.

    Repeated values (resource names, sets of env keys) are judged once, and the
    devices are walked in one loop with the per-string checks inlined: this walk was
    the larger part of the fast path's time (docs/design.md, "Footprint").
    """

    def __init__(self, *, flow: bool, pieces: dict[str, str]) -> None:
        #: Runs of device items cut out of the text, by the sentinel item left in each's place.
        self.pieces = pieces
        #: libyaml (ruamel.yaml's parser) refuses `:`, `?` and `#` in a plain scalar
        #: inside a flow collection ({V: 12:30}); YAML 1.2 and yaml-rs allow them.
        self.flow = flow
        #: (resourceName, instanceID) -> the device first defined so.
        self.seen: dict[tuple[str, str], Device] = {}
        #: Distinct devices per resource, and the env keys its devices set.
        self.counts: dict[str, int] = {}
        self.resource_keys: dict[str, set[str]] = {}
        #: Per resource, the sorted env keys last added to resource_keys.
        self.last_order: dict[str, tuple[str, ...]] = {}
        #: Strings that ruamel.yaml would type if they had been written plain.
        self.maybe_plain: set[str] = set()
        #: Env key tuples, in the order written, already judged: their sorted order.
        self.env_shapes: dict[tuple[str, ...], tuple[str, ...]] = {}

    def string(self, value: Any) -> str:
        if (
            type(value) is not str
            or value[:1] in _INDICATORS
            or (self.flow and (":" in value or "?" in value or "#" in value))
        ):
            raise _Doubt
        typed = TYPED_PLAIN.get(value[:1])
        # A plain scalar holds no line break and no space at its ends.
        if (
            typed is not None
            and value.count(".") < 2
            and typed.match(value)
            and "\n" not in value
            and value == value.strip()
        ):
            self.maybe_plain.add(value)
        return value

    def top(self, data: Any) -> Config:
        if type(data) is not dict or "deviceMapping" not in data or not data.keys() <= _TOP_KEYS:
            raise _Doubt
        exclusive = data.get("exclusive", False)
        mappings = data["deviceMapping"]
        if type(exclusive) is not bool or type(mappings) is not list:
            raise _Doubt
        out = tuple(self.mapping(m) for m in mappings)
        counts = self.counts
        for resource, _ in self.seen:
            counts[resource] += 1
        for _ in prefix_collisions(self.counts, self.resource_keys):
            raise _Doubt
        return Config(mappings=out, exclusive=exclusive)

    def mapping(self, data: Any) -> DeviceMapping:
        if type(data) is not dict or data.keys() != _MAPPING_KEYS:
            raise _Doubt
        hosts, devices = data["hosts"], data["devices"]
        if type(hosts) is not list or not hosts or type(devices) is not list:
            raise _Doubt
        names = []
        for host in hosts:
            name = self.string(host).lower()
            if not node_name_ok(name):
                raise _Doubt
            names.append(name)
        return DeviceMapping(hosts=tuple(names), devices=self.devices(devices))

    def devices(self, items: list[Any]) -> tuple[Device, ...]:
        out: list[Device] = []
        seen, counts, shapes = self.seen, self.counts, self.env_shapes
        last_order, maybe_plain = self.last_order, self.maybe_plain
        flow, typed_plain, valid_id = self.flow, TYPED_PLAIN, VALID_INSTANCE_ID.fullmatch
        for index, data in enumerate(items):
            # Each device's dicts are freed as it is walked: freed together at the end,
            # the whole document is one decref holding the GIL (a loop stall of ~5 ms
            # at 10 000 devices; docs/design.md, "Footprint").
            items[index] = None
            if type(data) is not dict:
                out.extend(self.piece(data))
                continue
            # resourceName and instanceID, and env if present: anything else is an unknown key.
            if len(data) != 2 + ("env" in data):
                raise _Doubt
            resource: Any = data.get("resourceName")
            if type(resource) is not str or resource not in counts:
                if extended_resource_name_problem(self.string(resource)) is not None:
                    raise _Doubt
                counts[resource] = 0
                self.resource_keys[resource] = set()
            instance: Any = data.get("instanceID")
            # The ID's characters hold no flow indicator and no space; `-` may start one.
            if type(instance) is not str or not valid_id(instance) or instance[0] == "-":
                raise _Doubt
            typed = typed_plain.get(instance[0])
            if typed is not None and instance.count(".") < 2 and typed.match(instance):
                maybe_plain.add(instance)
            env: Any = data.get("env")
            pairs: tuple[tuple[str, str], ...] = ()
            if env is not None:
                if type(env) is not dict:
                    raise _Doubt
                shape = tuple(env)
                order = shapes.get(shape)
                if order is None:
                    order = self.env_order(shape)
                # The text has no NUL and no escapes, so no value can hold one.
                values = []
                for key in order:
                    value = env[key]
                    if type(value) is int:
                        values.append((key, str(value)))
                        continue
                    if (
                        type(value) is not str
                        or value[:1] in _INDICATORS
                        or (flow and (":" in value or "?" in value or "#" in value))
                    ):
                        raise _Doubt
                    typed = typed_plain.get(value[:1])
                    # No typed form holds two dots (test_fast_path checks ruamel.yaml's
                    # expressions), and an IP address is the common value starting with a digit.
                    if (
                        typed is not None
                        and value.count(".") < 2
                        and typed.match(value)
                        and "\n" not in value
                        and value == value.strip()
                    ):
                        maybe_plain.add(value)
                    values.append((key, value))
                pairs = tuple(values)
                if last_order.get(resource) is not order:
                    last_order[resource] = order
                    self.resource_keys[resource].update(order)
            device = Device(resource, instance, pairs)
            previous = seen.setdefault((resource, instance), device)
            if previous is not device and previous != device:
                raise _Doubt
            out.append(device)
        return tuple(out)

    def piece(self, sentinel: Any) -> tuple[Device, ...]:
        """The devices of the piece cut out where ``sentinel`` stands (each piece once)."""
        text = self.pieces.pop(sentinel, None) if type(sentinel) is str else None
        if text is None:
            raise _Doubt
        try:
            items = yaml_rs.loads(text)
        except Exception:
            raise _Doubt from None
        if type(items) is not list:
            raise _Doubt
        return self.devices(items)

    def env_order(self, shape: tuple[str, ...]) -> tuple[str, ...]:
        """The sorted order of a set of env keys written in ``shape``'s order, each judged once."""
        for key in shape:
            if env_key_problem(self.string(key)) is not None:
                raise _Doubt
        order = self.env_shapes[shape] = tuple(sorted(shape))
        return order
