"""Validation of what a device may carry besides its env (SPEC §10): health checks,
host device nodes, mounts, annotations, CDI device names and capacity."""

from __future__ import annotations

from ruamel.yaml.nodes import MappingNode, Node, ScalarNode

from spookd.config.model import DeviceNode, HealthCheck, Mount
from spookd.config.report import Report
from spookd.config.rules import (
    DURATION,
    DURATION_UNITS,
    MAX_CAPACITY,
    MAX_DURATION,
    absolute_path_ok,
    annotation_key_ok,
    capacity_problem,
    cdi_name_ok,
    parse_int,
    permissions_ok,
    tcp_target_ok,
)
from spookd.config.yamlnodes import BOOL, INT, STR, describe, is_null, tag

_HEALTH_KEYS = ("tcp", "path", "interval", "timeout", "failureThreshold", "successThreshold")
_DEVICE_NODE_KEYS = ("hostPath", "containerPath", "permissions")
_MOUNT_KEYS = ("hostPath", "containerPath", "readOnly")


def absolute_path(report: Report, path: str, node: Node | None, what: str) -> str | None:
    """An absolute path without ``..``."""
    value = report.string(path, node, what)
    if value is None:
        return None
    if not absolute_path_ok(value):
        report.error(path, node, f"{what} `{value}` must be an absolute path without `..`, like /dev/kvm")
        return None
    return value


def device_node(report: Report, path: str, node: Node) -> DeviceNode | None:
    """One entry of ``deviceNodes``."""
    if not isinstance(node, MappingNode):
        report.error(path, node, f"expected a mapping with `hostPath`, got {describe(node)}")
        return None
    keys = report.keys(path, node, _DEVICE_NODE_KEYS, ("hostPath",))
    host = absolute_path(report, f"{path}.hostPath", keys.get("hostPath"), "hostPath")
    container = host
    if "containerPath" in keys:
        container = absolute_path(report, f"{path}.containerPath", keys["containerPath"], "containerPath")
    permissions: str | None = "rw"
    if "permissions" in keys:
        permissions = report.string(f"{path}.permissions", keys["permissions"], "permissions")
        if permissions is not None and not permissions_ok(permissions):
            report.error(
                f"{path}.permissions",
                keys["permissions"],
                f"permissions `{permissions}` must be some of r, w and m (read, write, mknod), like rw",
            )
            permissions = None
    if host is None or container is None or permissions is None:
        return None
    return DeviceNode(host_path=host, container_path=container, permissions=permissions)


def mount(report: Report, path: str, node: Node) -> Mount | None:
    """One entry of ``mounts``."""
    if not isinstance(node, MappingNode):
        report.error(
            path, node, f"expected a mapping with `hostPath` and `containerPath`, got {describe(node)}"
        )
        return None
    keys = report.keys(path, node, _MOUNT_KEYS, ("hostPath", "containerPath"))
    host = absolute_path(report, f"{path}.hostPath", keys.get("hostPath"), "hostPath")
    container = absolute_path(report, f"{path}.containerPath", keys.get("containerPath"), "containerPath")
    read_only = False
    if "readOnly" in keys:
        flag = keys["readOnly"]
        if not isinstance(flag, ScalarNode) or tag(flag) != BOOL:
            report.error(f"{path}.readOnly", flag, f"readOnly must be true or false, got {describe(flag)}")
            return None
        read_only = flag.value.lower() == "true"
    if host is None or container is None:
        return None
    return Mount(host_path=host, container_path=container, read_only=read_only)


def device_annotations(report: Report, path: str, node: Node | None) -> tuple[tuple[str, str], ...]:
    """The ``annotations`` mapping, sorted by name."""
    if node is None or is_null(node):
        return ()
    if not isinstance(node, MappingNode):
        report.error(path, node, f"annotations must be a mapping of names to strings, got {describe(node)}")
        return ()
    out: dict[str, str] = {}
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, ScalarNode) else describe(key_node)
        sub = f"{path}.{key}"
        if not isinstance(key_node, ScalarNode) or tag(key_node) != STR or not annotation_key_ok(key):
            report.error(
                sub, key_node, f"annotation name `{key}` must be a qualified name like example.com/model"
            )
            continue
        if key in out:
            report.error(sub, key_node, f"duplicate annotation `{key}`")
            continue
        value = report.string(sub, value_node, "an annotation value")
        if value is not None:
            out[key] = value
    return tuple(sorted(out.items()))


def cdi_name(report: Report, path: str, node: Node) -> str | None:
    """One entry of ``cdiDevices``."""
    value = report.string(path, node, "a CDI device name")
    if value is None:
        return None
    if not cdi_name_ok(value):
        report.error(
            path,
            node,
            f"`{value}` is not a CDI device name; write vendor.com/class=name, like nvidia.com/gpu=0",
        )
        return None
    return value


def health_check(report: Report, path: str, node: Node | None) -> HealthCheck | None:
    """The ``healthCheck`` mapping: exactly one of tcp and path, with timings and thresholds."""
    if node is None:
        return None
    if not isinstance(node, MappingNode):
        report.error(path, node, f"healthCheck must be a mapping with `tcp` or `path`, got {describe(node)}")
        return None
    keys = report.keys(path, node, _HEALTH_KEYS, ())
    if ("tcp" in keys) == ("path" in keys):
        report.error(path, node, "healthCheck needs exactly one of `tcp: host:port` or `path: /some/path`")
        return None
    tcp = target = None
    if "tcp" in keys:
        tcp = report.string(f"{path}.tcp", keys["tcp"], "tcp")
        if tcp is not None and not tcp_target_ok(tcp):
            report.error(f"{path}.tcp", keys["tcp"], f"tcp `{tcp}` must be host:port, like 10.0.10.215:5025")
            return None
        if tcp is None:
            return None
    else:
        target = absolute_path(report, f"{path}.path", keys["path"], "path")
        if target is None:
            return None
    defaults = HealthCheck()
    interval = _duration(report, f"{path}.interval", keys.get("interval"), defaults.interval)
    timeout = _duration(report, f"{path}.timeout", keys.get("timeout"), defaults.timeout)
    failures = _count(
        report, f"{path}.failureThreshold", keys.get("failureThreshold"), defaults.failure_threshold
    )
    successes = _count(
        report, f"{path}.successThreshold", keys.get("successThreshold"), defaults.success_threshold
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


def _duration(report: Report, path: str, node: Node | None, default: float) -> float | None:
    if node is None:
        return default
    if isinstance(node, ScalarNode) and tag(node) == INT:
        seconds = float(parse_int(node.value))
    else:
        text = report.string(path, node, "a duration")
        if text is None:
            return None
        match = DURATION.fullmatch(text)
        if match is None:
            report.error(
                path, node, f"`{text}` is not a duration; write a number with ms, s, m or h, like 10s"
            )
            return None
        seconds = float(match.group(1)) * DURATION_UNITS[match.group(2)]
    if not 0 < seconds <= MAX_DURATION:
        report.error(path, node, "a duration must be more than 0 and at most 24h")
        return None
    return seconds


def _count(report: Report, path: str, node: Node | None, default: int) -> int | None:
    if node is None:
        return default
    if not isinstance(node, ScalarNode) or tag(node) != INT or not 1 <= parse_int(node.value) <= 1000:
        report.error(path, node, "a threshold must be a whole number from 1 to 1000")
        return None
    return parse_int(node.value)


def capacity(report: Report, path: str, node: Node | None) -> int | None:
    """``capacity``: how many containers may hold the device at once (1 when absent)."""
    if node is None:
        return 1
    if not isinstance(node, ScalarNode) or tag(node) != INT:
        hint = ""
        if isinstance(node, ScalarNode) and tag(node) == STR and node.value.strip().isdigit():
            hint = f"; write it without quotes: capacity: {node.value.strip()}"
        report.error(
            path,
            node,
            f"capacity must be a whole number from 1 to {MAX_CAPACITY} (how many containers may "
            f"hold the device at once), got {describe(node)}{hint}",
        )
        return None
    value = parse_int(node.value)
    problem = capacity_problem(value)
    if problem is not None:
        report.error(path, node, problem)
        return None
    return value
