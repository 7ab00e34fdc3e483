"""YAML loading with positions, and validation per SPEC §1.

The YAML is composed into a node tree (ruamel.yaml's C parser where installed), and
the tree is walked once: every error found is collected with its source, line,
column and YAML path, so a user sees all problems at once.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import re
import threading
from collections.abc import Callable, Iterator
from typing import NoReturn, TypeVar

from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from spookd.config.model import (
    Config,
    ConfigError,
    ConfigInvalid,
    Device,
    DeviceMapping,
    DeviceNode,
    HealthCheck,
    Mount,
)
from spookd.config.yamlnodes import compose
from spookd.naming import env_prefix

T = TypeVar("T")

#: Files larger than this are refused before parsing (ConfigMaps hold at most 1 MiB).
MAX_FILE_BYTES = 64 * 1024 * 1024

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_TYPE_NAMES = {
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:float": "a floating-point number",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "a date",
    _INT: "a number",
    _STR: "a string",
}

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_INSTANCE_ID = re.compile(r"[A-Za-z0-9._-]+")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED_ENV_KEYS = frozenset({"ID", "TYPE", "NUM_DEVICES"})
_DEV_INDEX_KEY = re.compile(r"DEV[0-9]+_")
_MAX_ID = 63
_MAX_NAME = 63
_MAX_DNS_SUBDOMAIN = 253
# The kubelet checks "requests.<name>" as a qualified name (quota naming), so the
# domain may use at most 253 - len("requests.") characters.
_REQUESTS_PREFIX = "requests."

_TOP_KEYS = ("deviceMapping", "exclusive")
_MAPPING_KEYS = ("hosts", "devices")
_DEVICE_KEYS = (
    "resourceName",
    "instanceID",
    "env",
    "healthCheck",
    "deviceNodes",
    "mounts",
    "annotations",
    "cdiDevices",
)
_HEALTH_KEYS = ("tcp", "path", "interval", "timeout", "failureThreshold", "successThreshold")
_DEVICE_NODE_KEYS = ("hostPath", "containerPath", "permissions")
_MOUNT_KEYS = ("hostPath", "containerPath", "readOnly")
_BOOL = "tag:yaml.org,2002:bool"
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_MAX_DURATION = 24 * 3600.0
_TCP_TARGET = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})")
_CDI_NAME = re.compile(
    r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+/[A-Za-z0-9][A-Za-z0-9_.-]*=[A-Za-z0-9][A-Za-z0-9_.:-]*"
)


def load_config(text: str | bytes, source: str) -> Config:
    """Parse and validate a configuration; raise ConfigInvalid listing every error."""
    with _collector_paused():
        return _Validator(source).run(text)


_paused = 0
_reenable = False
_paused_lock = threading.Lock()


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Keep the cyclic garbage collector out of a parse.

    Composing a large document makes ~10 nodes per device, all alive until the walk
    ends, so each collection the allocations trigger finds nothing to free; the full
    ones walk the whole heap holding the GIL (half the parse time, and a stall of the
    daemon's event loop while the parse runs in a worker thread).
    """
    global _paused, _reenable  # noqa: PLW0603 - one process-wide switch, counted across threads
    with _paused_lock:
        if _paused == 0:
            _reenable = gc.isenabled()
            gc.disable()
        _paused += 1
    try:
        yield
    finally:
        with _paused_lock:
            _paused -= 1
            if _paused == 0 and _reenable:
                gc.enable()


class _Stop(Exception):
    """Aborts validation after an error that leaves nothing to walk."""


def _tag(node: Node) -> str:
    tag = node.ctag
    return tag if isinstance(tag, str) else str(tag.trval)


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _TYPE_NAMES.get(_tag(node), f"a value tagged {_tag(node)}")


def _parse_int(text: str) -> int:
    body = text.replace("_", "")
    sign = -1 if body.startswith("-") else 1
    body = body.lstrip("+-")
    if body[:2] in ("0x", "0X"):
        return sign * int(body[2:], 16)
    if body[:2] in ("0o", "0O"):
        return sign * int(body[2:], 8)
    return sign * int(body, 10)


def _suggest(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if not close:
        close = [a for a in allowed if a.lower() == key.lower()]
    if close:
        return f"; did you mean `{close[0]}`?"
    return f"; expected one of: {', '.join(allowed)}"


class _Place:
    """A node's position and YAML path, remembered for later cross-checks."""

    __slots__ = ("column", "line", "path")

    def __init__(self, path: str, node: Node) -> None:
        self.path = path
        self.line = node.start_mark.line + 1
        self.column = node.start_mark.column + 1


class _Validator:
    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[ConfigError] = []
        # (resourceName, instanceID) -> (env, place of first occurrence)
        self.seen: dict[tuple[str, str], tuple[Device, _Place]] = {}
        self.resource_places: dict[str, _Place] = {}
        self.resource_keys: dict[str, set[str]] = {}
        self.exclusive = False

    # -- reporting -------------------------------------------------------

    def error(self, path: str, node: Node | None, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        column = node.start_mark.column + 1 if node is not None else 1
        self.errors.append(ConfigError(self.source, line, column, path, message))

    def fatal(self, line: int, column: int, message: str) -> NoReturn:
        self.errors.append(ConfigError(self.source, line, column, "", message))
        raise _Stop

    # -- entry -----------------------------------------------------------

    def run(self, text: str | bytes) -> Config:
        try:
            config = self._run(text)
        except _Stop:
            config = None
        if self.errors or config is None:
            raise ConfigInvalid(sorted(self.errors, key=lambda e: (e.line, e.column)))
        return config

    def _run(self, text: str | bytes) -> Config | None:
        if len(text) > MAX_FILE_BYTES:
            self.fatal(1, 1, f"the configuration is larger than {MAX_FILE_BYTES} bytes")
        if isinstance(text, bytes):
            text = self._decode(text)
        if "\x00" in text:
            before = text[: text.index("\x00")]
            line = before.count("\n") + 1
            column = len(before) - (before.rfind("\n") + 1) + 1
            self.fatal(line, column, "NUL character in the configuration; is it a binary file?")
        root = self._compose(text)
        if root is None:
            self.fatal(1, 1, "the configuration is empty; write `deviceMapping: []` to serve no devices")
        mappings = self._top(root)
        return Config(mappings=tuple(mappings), exclusive=self.exclusive) if not self.errors else None

    def _decode(self, data: bytes) -> str:
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            before = data[: exc.start]
            line = before.count(b"\n") + 1
            column = len(before) - (before.rfind(b"\n") + 1) + 1
            self.fatal(line, column, "not valid UTF-8 text; is it a binary file?")

    def _compose(self, text: str) -> Node | None:
        try:
            return compose(text)
        except MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = exc.problem or "invalid YAML"
            if exc.context and "single document" in str(exc.context):
                problem = "more than one YAML document; put everything in one document"
            line = mark.line + 1 if mark is not None else 1
            column = mark.column + 1 if mark is not None else 1
            self.fatal(line, column, f"invalid YAML: {problem}")
        except YAMLError as exc:
            self.fatal(1, 1, f"invalid YAML: {str(exc).splitlines()[0] if str(exc) else exc!r}")

    # -- structure -------------------------------------------------------

    def _keys(
        self, path: str, node: MappingNode, allowed: tuple[str, ...], required: tuple[str, ...]
    ) -> dict[str, Node]:
        found: dict[str, Node] = {}
        key_nodes: dict[str, Node] = {}
        suggested: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or _tag(key_node) != _STR:
                shown = key_node.value if isinstance(key_node, ScalarNode) else _describe(key_node)
                self.error(path, key_node, f"unknown key `{shown}`{_suggest(str(shown), allowed)}")
                continue
            key = key_node.value
            sub = f"{path}.{key}" if path else key
            if key in key_nodes:
                self.error(sub, key_node, f"duplicate key `{key}`; each key may appear once")
                continue
            key_nodes[key] = key_node
            if key not in allowed:
                hint = _suggest(key, allowed)
                if "did you mean" in hint:
                    suggested.add(hint.split("`")[1])
                self.error(sub, key_node, f"unknown key `{key}`{hint}")
                continue
            found[key] = value_node
        for key in required:
            if key not in found and key not in key_nodes and key not in suggested:
                self.error(path, node, f"missing key `{key}`")
        return found

    def _top(self, root: Node) -> list[DeviceMapping]:
        if not isinstance(root, MappingNode):
            self.error(
                "",
                root,
                f"the configuration must be a mapping with the key `deviceMapping`, got {_describe(root)}",
            )
            return []
        keys = self._keys("", root, _TOP_KEYS, ("deviceMapping",))
        flag = keys.get("exclusive")
        if flag is not None:
            if isinstance(flag, ScalarNode) and _tag(flag) == _BOOL:
                self.exclusive = flag.value.lower() == "true"
            else:
                self.error("exclusive", flag, f"exclusive must be true or false, got {_describe(flag)}")
        node = keys.get("deviceMapping")
        if node is None:
            return []
        if not isinstance(node, SequenceNode):
            hint = "; write `deviceMapping: []` to serve no devices" if _tag(node).endswith("null") else ""
            self.error("deviceMapping", node, f"expected a list of mappings, got {_describe(node)}{hint}")
            return []
        mappings = [self._mapping(f"deviceMapping[{i}]", item) for i, item in enumerate(node.value)]
        self._check_variable_collisions()
        return [m for m in mappings if m is not None]

    def _mapping(self, path: str, node: Node) -> DeviceMapping | None:
        if not isinstance(node, MappingNode):
            self.error(path, node, f"expected a mapping with `hosts` and `devices`, got {_describe(node)}")
            return None
        keys = self._keys(path, node, _MAPPING_KEYS, _MAPPING_KEYS)
        hosts = self._hosts(f"{path}.hosts", keys["hosts"]) if "hosts" in keys else []
        devices: list[Device] = []
        devices_node = keys.get("devices")
        if devices_node is not None:
            if isinstance(devices_node, SequenceNode):
                for i, item in enumerate(devices_node.value):
                    device = self._device(f"{path}.devices[{i}]", item)
                    if device is not None:
                        devices.append(device)
            else:
                hint = "; write `devices: []` for none" if _tag(devices_node).endswith("null") else ""
                self.error(
                    f"{path}.devices",
                    devices_node,
                    f"expected a list of devices, got {_describe(devices_node)}{hint}",
                )
        return DeviceMapping(hosts=tuple(hosts), devices=tuple(devices))

    def _hosts(self, path: str, node: Node) -> list[str]:
        if not isinstance(node, SequenceNode):
            self.error(path, node, f"expected a list of node names, got {_describe(node)}")
            return []
        if not node.value:
            self.error(path, node, "empty list; name at least one node, for example `hosts: [node-1]`")
        hosts: list[str] = []
        for i, item in enumerate(node.value):
            sub = f"{path}[{i}]"
            if not isinstance(item, ScalarNode) or _tag(item) != _STR:
                self.error(sub, item, f"a node name must be a string, got {_describe(item)}; quote it")
                continue
            host = item.value.lower()
            if len(host) > _MAX_DNS_SUBDOMAIN or not _DNS_SUBDOMAIN.fullmatch(host):
                self.error(
                    sub,
                    item,
                    f"`{item.value}` is not a valid node name (a DNS subdomain such as `lab1-host1`)",
                )
                continue
            hosts.append(host)
        return hosts

    def _device(self, path: str, node: Node) -> Device | None:
        if not isinstance(node, MappingNode):
            self.error(
                path,
                node,
                f"expected a device mapping with `resourceName` and `instanceID`, got {_describe(node)}",
            )
            return None
        keys = self._keys(path, node, _DEVICE_KEYS, ("resourceName", "instanceID"))
        resource = self._resource_name(f"{path}.resourceName", keys.get("resourceName"))
        instance = self._instance_id(f"{path}.instanceID", keys.get("instanceID"))
        env = self._env(f"{path}.env", keys.get("env"))
        errors = len(self.errors)
        health = self._health_check(f"{path}.healthCheck", keys.get("healthCheck"))
        nodes = self._list(f"{path}.deviceNodes", keys.get("deviceNodes"), self._device_node)
        mounts = self._list(f"{path}.mounts", keys.get("mounts"), self._mount)
        annotations = self._annotations(f"{path}.annotations", keys.get("annotations"))
        cdi = self._list(f"{path}.cdiDevices", keys.get("cdiDevices"), self._cdi_name)
        if resource is None or instance is None or env is None or len(self.errors) > errors:
            return None
        device = Device(
            resource_name=resource,
            instance_id=instance,
            env=env,
            health_check=health,
            device_nodes=tuple(nodes),
            mounts=tuple(mounts),
            annotations=annotations,
            cdi_devices=tuple(cdi),
        )
        place = _Place(path, node)
        previous = self.seen.get((resource, instance))
        if previous is None:
            self.seen[(resource, instance)] = (device, place)
        elif previous[0] != device:
            first = previous[1]
            self.error(
                path,
                node,
                f"device {resource} {instance!r} is also defined at {first.path} "
                f"(line {first.line}) with a different env or settings; every occurrence of a "
                "device must be identical",
            )
        if resource not in self.resource_places:
            self.resource_places[resource] = _Place(f"{path}.resourceName", keys["resourceName"])
        self.resource_keys.setdefault(resource, set()).update(k for k, _ in env)
        return device

    # -- host devices and health -----------------------------------------

    def _list(self, path: str, node: Node | None, item: Callable[[str, Node], T | None]) -> list[T]:
        if node is None or (isinstance(node, ScalarNode) and _tag(node).endswith("null")):
            return []
        if not isinstance(node, SequenceNode):
            self.error(path, node, f"expected a list, got {_describe(node)}")
            return []
        out = []
        for i, child in enumerate(node.value):
            value = item(f"{path}[{i}]", child)
            if value is not None:
                out.append(value)
        return out

    def _absolute_path(self, path: str, node: Node | None, what: str) -> str | None:
        value = self._string(path, node, what)
        if value is None:
            return None
        if not value.startswith("/") or "\x00" in value or any(p == ".." for p in value.split("/")):
            self.error(path, node, f"{what} `{value}` must be an absolute path without `..`, like /dev/kvm")
            return None
        return value

    def _device_node(self, path: str, node: Node) -> DeviceNode | None:
        if not isinstance(node, MappingNode):
            self.error(path, node, f"expected a mapping with `hostPath`, got {_describe(node)}")
            return None
        keys = self._keys(path, node, _DEVICE_NODE_KEYS, ("hostPath",))
        host = self._absolute_path(f"{path}.hostPath", keys.get("hostPath"), "hostPath")
        container = host
        if "containerPath" in keys:
            container = self._absolute_path(f"{path}.containerPath", keys["containerPath"], "containerPath")
        permissions: str | None = "rw"
        if "permissions" in keys:
            permissions = self._string(f"{path}.permissions", keys["permissions"], "permissions")
            if permissions is not None and (
                not permissions or set(permissions) - set("rwm") or len(set(permissions)) != len(permissions)
            ):
                self.error(
                    f"{path}.permissions",
                    keys["permissions"],
                    f"permissions `{permissions}` must be some of r, w and m (read, write, mknod), like rw",
                )
                permissions = None
        if host is None or container is None or permissions is None:
            return None
        return DeviceNode(host_path=host, container_path=container, permissions=permissions)

    def _mount(self, path: str, node: Node) -> Mount | None:
        if not isinstance(node, MappingNode):
            self.error(
                path, node, f"expected a mapping with `hostPath` and `containerPath`, got {_describe(node)}"
            )
            return None
        keys = self._keys(path, node, _MOUNT_KEYS, ("hostPath", "containerPath"))
        host = self._absolute_path(f"{path}.hostPath", keys.get("hostPath"), "hostPath")
        container = self._absolute_path(f"{path}.containerPath", keys.get("containerPath"), "containerPath")
        read_only = False
        if "readOnly" in keys:
            flag = keys["readOnly"]
            if not isinstance(flag, ScalarNode) or _tag(flag) != _BOOL:
                self.error(f"{path}.readOnly", flag, f"readOnly must be true or false, got {_describe(flag)}")
                return None
            read_only = flag.value.lower() == "true"
        if host is None or container is None:
            return None
        return Mount(host_path=host, container_path=container, read_only=read_only)

    def _annotations(self, path: str, node: Node | None) -> tuple[tuple[str, str], ...]:
        if node is None or (isinstance(node, ScalarNode) and _tag(node).endswith("null")):
            return ()
        if not isinstance(node, MappingNode):
            self.error(
                path, node, f"annotations must be a mapping of names to strings, got {_describe(node)}"
            )
            return ()
        out: dict[str, str] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else _describe(key_node)
            sub = f"{path}.{key}"
            if not isinstance(key_node, ScalarNode) or _tag(key_node) != _STR or not _annotation_key_ok(key):
                self.error(
                    sub, key_node, f"annotation name `{key}` must be a qualified name like example.com/model"
                )
                continue
            if key in out:
                self.error(sub, key_node, f"duplicate annotation `{key}`")
                continue
            value = self._string(sub, value_node, "an annotation value")
            if value is not None:
                out[key] = value
        return tuple(sorted(out.items()))

    def _cdi_name(self, path: str, node: Node) -> str | None:
        value = self._string(path, node, "a CDI device name")
        if value is None:
            return None
        if not _CDI_NAME.fullmatch(value):
            self.error(
                path,
                node,
                f"`{value}` is not a CDI device name; write vendor.com/class=name, like nvidia.com/gpu=0",
            )
            return None
        return value

    def _health_check(self, path: str, node: Node | None) -> HealthCheck | None:
        if node is None:
            return None
        if not isinstance(node, MappingNode):
            self.error(
                path, node, f"healthCheck must be a mapping with `tcp` or `path`, got {_describe(node)}"
            )
            return None
        keys = self._keys(path, node, _HEALTH_KEYS, ())
        if ("tcp" in keys) == ("path" in keys):
            self.error(path, node, "healthCheck needs exactly one of `tcp: host:port` or `path: /some/path`")
            return None
        tcp = target = None
        if "tcp" in keys:
            tcp = self._string(f"{path}.tcp", keys["tcp"], "tcp")
            if tcp is not None and not _tcp_target_ok(tcp):
                self.error(
                    f"{path}.tcp", keys["tcp"], f"tcp `{tcp}` must be host:port, like 10.0.10.215:5025"
                )
                return None
            if tcp is None:
                return None
        else:
            target = self._absolute_path(f"{path}.path", keys["path"], "path")
            if target is None:
                return None
        defaults = HealthCheck()
        interval = self._duration(f"{path}.interval", keys.get("interval"), defaults.interval)
        timeout = self._duration(f"{path}.timeout", keys.get("timeout"), defaults.timeout)
        failures = self._count(
            f"{path}.failureThreshold", keys.get("failureThreshold"), defaults.failure_threshold
        )
        successes = self._count(
            f"{path}.successThreshold", keys.get("successThreshold"), defaults.success_threshold
        )
        if interval is None or timeout is None or failures is None or successes is None:
            return None
        return HealthCheck(
            tcp=tcp,
            path=target,
            interval=interval,
            timeout=timeout,
            failure_threshold=failures,
            success_threshold=successes,
        )

    def _duration(self, path: str, node: Node | None, default: float) -> float | None:
        if node is None:
            return default
        if isinstance(node, ScalarNode) and _tag(node) == _INT:
            seconds = float(_parse_int(node.value))
        else:
            text = self._string(path, node, "a duration")
            if text is None:
                return None
            match = _DURATION.fullmatch(text)
            if match is None:
                self.error(
                    path, node, f"`{text}` is not a duration; write a number with ms, s, m or h, like 10s"
                )
                return None
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        if not 0 < seconds <= _MAX_DURATION:
            self.error(path, node, "a duration must be more than 0 and at most 24h")
            return None
        return seconds

    def _count(self, path: str, node: Node | None, default: int) -> int | None:
        if node is None:
            return default
        if not isinstance(node, ScalarNode) or _tag(node) != _INT or not 1 <= _parse_int(node.value) <= 1000:
            self.error(path, node, "a threshold must be a whole number from 1 to 1000")
            return None
        return _parse_int(node.value)

    # -- scalars ---------------------------------------------------------

    def _string(self, path: str, node: Node | None, what: str) -> str | None:
        if node is None:
            return None
        if not isinstance(node, ScalarNode) or _tag(node) != _STR:
            hint = f'; quote it: "{node.value}"' if isinstance(node, ScalarNode) else ""
            self.error(path, node, f"{what} must be a string, got {_describe(node)}{hint}")
            return None
        return str(node.value)

    def _resource_name(self, path: str, node: Node | None) -> str | None:
        name = self._string(path, node, "resourceName")
        if name is None:
            return None
        problem = extended_resource_name_problem(name)
        if problem is not None:
            self.error(path, node, f"`{name}` is not a valid extended resource name: {problem}")
            return None
        return name

    def _instance_id(self, path: str, node: Node | None) -> str | None:
        if node is None:
            return None
        if isinstance(node, ScalarNode) and _tag(node) in (_INT, "tag:yaml.org,2002:float"):
            self.error(
                path,
                node,
                f"instanceID is an unquoted number ({node.value} would lose its exact spelling); "
                f'quote it: instanceID: "{node.value}"',
            )
            return None
        value = self._string(path, node, "instanceID")
        if value is None:
            return None
        if not value:
            self.error(path, node, 'instanceID is empty; give each device a non-empty ID such as "0001"')
            return None
        if len(value) > _MAX_ID:
            self.error(
                path,
                node,
                f"instanceID is {len(value)} characters long; the kubelet allows at most {_MAX_ID}",
            )
            return None
        if not _INSTANCE_ID.fullmatch(value):
            bad = sorted({c for c in value if not _INSTANCE_ID.fullmatch(c)})
            self.error(
                path,
                node,
                f"instanceID `{value}` contains {''.join(bad)!r}; use only letters, digits, `.`, `_` and `-`",
            )
            return None
        return value

    def _env(self, path: str, node: Node | None) -> tuple[tuple[str, str], ...] | None:
        if node is None or (isinstance(node, ScalarNode) and _tag(node).endswith("null")):
            return ()
        if not isinstance(node, MappingNode):
            self.error(path, node, f"env must be a mapping of names to values, got {_describe(node)}")
            return None
        env: dict[str, str] = {}
        ok = True
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            sub = f"{path}.{key}"
            if not isinstance(key_node, ScalarNode) or _tag(key_node) != _STR:
                self.error(
                    sub,
                    key_node,
                    f"env names must be strings matching [A-Za-z_][A-Za-z0-9_]*, got {_describe(key_node)}",
                )
                ok = False
                continue
            if not _ENV_KEY.fullmatch(key_node.value):
                self.error(sub, key_node, f"env name `{key}` must match [A-Za-z_][A-Za-z0-9_]*")
                ok = False
                continue
            if key in _RESERVED_ENV_KEYS or _DEV_INDEX_KEY.match(key_node.value):
                self.error(
                    sub,
                    key_node,
                    f"env name `{key}` is reserved: Spookd generates ID, TYPE, NUM_DEVICES and "
                    "DEV<n>_* itself; rename it",
                )
                ok = False
                continue
            if key in env:
                self.error(sub, key_node, f"duplicate env name `{key}`")
                ok = False
                continue
            value = self._env_value(sub, value_node)
            if value is None:
                ok = False
                continue
            env[key_node.value] = value
        return tuple(sorted(env.items())) if ok else None

    def _env_value(self, path: str, node: Node) -> str | None:
        if isinstance(node, ScalarNode):
            tag = _tag(node)
            if tag == _STR:
                if "\x00" in node.value:
                    self.error(
                        path,
                        node,
                        "env value contains a NUL character, which no environment variable can hold",
                    )
                    return None
                return str(node.value)
            if tag == _INT:
                return str(_parse_int(node.value))
            self.error(
                path,
                node,
                f"env value `{node.value}` is {_describe(node)}; "
                f'quote it if you mean the text: "{node.value}"',
            )
            return None
        self.error(path, node, f"env value must be a string or an integer, got {_describe(node)}")
        return None

    # -- cross-checks ----------------------------------------------------

    def _check_variable_collisions(self) -> None:
        """Two resources must never set the same variable in a container given both."""
        counts: dict[str, int] = {}
        for resource, _ in self.seen:
            counts[resource] = counts.get(resource, 0) + 1
        by_prefix: dict[str, str] = {}
        for resource in sorted(counts):
            prefix = env_prefix(resource)
            other = by_prefix.get(prefix)
            if other is not None:
                self._collision(resource, other, f"{prefix}_ID")
                continue
            by_prefix[prefix] = resource
        for resource in sorted(counts):
            prefix = env_prefix(resource)
            parts = prefix.split("_")
            for cut in range(1, len(parts)):
                shorter = "_".join(parts[:cut])
                other = by_prefix.get(shorter)
                if other is None or other == resource:
                    continue
                rest = "_".join(parts[cut:])
                taken = set(self._suffixes(other, counts[other]))
                for suffix in self._suffixes(resource, counts[resource]):
                    if f"{rest}_{suffix}" in taken:
                        self._collision(resource, other, f"{prefix}_{suffix}")
                        break

    def _suffixes(self, resource: str, count: int) -> Iterator[str]:
        keys = sorted(self.resource_keys.get(resource, ()))
        yield from ("ID", "TYPE", "NUM_DEVICES", *keys)
        for i in range(count):
            for key in ("ID", "TYPE", *keys):
                yield f"DEV{i}_{key}"

    def _collision(self, resource: str, other: str, variable: str) -> None:
        place = self.resource_places[resource]
        first = self.resource_places[other]
        self.errors.append(
            ConfigError(
                self.source,
                place.line,
                place.column,
                place.path,
                f"resources `{other}` ({first.path}, line {first.line}) and `{resource}` would both "
                f"set {variable} in a container given both; rename one of them or its env name",
            )
        )


def _tcp_target_ok(target: str) -> bool:
    match = _TCP_TARGET.fullmatch(target)
    return match is not None and 1 <= int(match.group(2)) <= 65535


def _annotation_key_ok(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > _MAX_DNS_SUBDOMAIN or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return 0 < len(name) <= _MAX_NAME and _QUALIFIED_NAME.fullmatch(name) is not None


def extended_resource_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid extended resource name, or None when it is."""
    if "/" not in name:
        return "it needs a domain, like `example.com/widget`"
    if "kubernetes.io/" in name:
        return "the kubernetes.io namespace is reserved for Kubernetes; use your own domain"
    if name.startswith(_REQUESTS_PREFIX):
        return "names starting with `requests.` are reserved for quota; drop the prefix"
    domain, _, short = name.partition("/")
    if "/" in short:
        return "it may contain only one `/`, like `example.com/widget`"
    if (
        not domain
        or len(_REQUESTS_PREFIX + domain) > _MAX_DNS_SUBDOMAIN
        or not _DNS_SUBDOMAIN.fullmatch(domain)
    ):
        return f"the domain `{domain}` must be a lower-case DNS subdomain, like `example.com`"
    if not short or len(short) > _MAX_NAME or not _QUALIFIED_NAME.fullmatch(short):
        return (
            f"the name `{short}` must be 1-{_MAX_NAME} characters of letters, digits, "
            "`-`, `_` and `.`, starting and ending with a letter or digit"
        )
    return None
