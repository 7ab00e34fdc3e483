"""Validation per SPEC §1: one walk over the composed node tree.

The walk follows the configuration's structure (mappings, devices, env) and leaves
single-value rules to spookd.config.rules, the optional device features of SPEC §10
to spookd.config.hostdevices and the checks across the whole file to
spookd.config.crosscheck. Every error is collected with its place.
"""

from __future__ import annotations

from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from spookd.config import hostdevices, selectors
from spookd.config.crosscheck import DeviceIndex
from spookd.config.model import Config, ConfigInvalid, Device, DeviceMapping
from spookd.config.report import Place, Report
from spookd.config.rules import (
    env_key_problem,
    env_value_problem,
    extended_resource_name_problem,
    instance_id_problem,
    node_name_ok,
    parse_int,
)
from spookd.config.yamlnodes import BOOL, FLOAT, INT, STR, describe, is_null, tag

_TOP_KEYS = ("deviceMapping", "exclusive")
_MAPPING_KEYS = ("hosts", "devices", "nodeSelector")
_DEVICE_KEYS = (
    "resourceName",
    "instanceID",
    "env",
    "healthCheck",
    "deviceNodes",
    "mounts",
    "annotations",
    "cdiDevices",
    "capacity",
)


def validate(root: Node, source: str) -> Config:
    """The configuration that the node tree ``root`` describes; raise ConfigInvalid listing every error."""
    walk = _Walk(source)
    config = walk.top(root)
    if walk.errors:
        raise ConfigInvalid(sorted(walk.errors, key=lambda e: (e.line, e.column)))
    return config


class _Walk(Report):
    def __init__(self, source: str) -> None:
        super().__init__(source)
        self.index: DeviceIndex[Place] = DeviceIndex()

    def top(self, root: Node) -> Config:
        if not isinstance(root, MappingNode):
            self.error(
                "",
                root,
                f"the configuration must be a mapping with the key `deviceMapping`, got {describe(root)}",
            )
            return Config()
        keys = self.keys("", root, _TOP_KEYS, ("deviceMapping",))
        exclusive = False
        flag = keys.get("exclusive")
        if flag is not None:
            if isinstance(flag, ScalarNode) and tag(flag) == BOOL:
                exclusive = flag.value.lower() == "true"
            else:
                self.error("exclusive", flag, f"exclusive must be true or false, got {describe(flag)}")
        node = keys.get("deviceMapping")
        if node is None:
            return Config(exclusive=exclusive)
        if not isinstance(node, SequenceNode):
            hint = "; write `deviceMapping: []` to serve no devices" if tag(node).endswith("null") else ""
            self.error("deviceMapping", node, f"expected a list of mappings, got {describe(node)}{hint}")
            return Config(exclusive=exclusive)
        mappings = [self.mapping(f"deviceMapping[{i}]", item) for i, item in enumerate(node.value)]
        for resource, other, variable in self.index.collisions():
            first = self.index.resource_places[other]
            self.at(
                self.index.resource_places[resource],
                f"resources `{other}` ({first.path}, line {first.line}) and `{resource}` would both "
                f"set {variable} in a container given both; rename one of them or its env name",
            )
        return Config(mappings=tuple(m for m in mappings if m is not None), exclusive=exclusive)

    def mapping(self, path: str, node: Node) -> DeviceMapping | None:
        if not isinstance(node, MappingNode):
            self.error(path, node, f"expected a mapping with `hosts` and `devices`, got {describe(node)}")
            return None
        keys = self.keys(path, node, _MAPPING_KEYS, ("devices",))
        near_miss = any(
            e.path.startswith(f"{path}.")
            and ("did you mean `hosts`" in e.message or "did you mean `nodeSelector`" in e.message)
            for e in self.errors
        )
        if not keys.keys() & {"hosts", "nodeSelector"} and not near_miss:
            self.error(path, node, "missing key `hosts` (or `nodeSelector`)")
        hosts = self.hosts(f"{path}.hosts", keys["hosts"]) if "hosts" in keys else []
        selector = None
        if "nodeSelector" in keys:
            selector = selectors.node_selector(self, f"{path}.nodeSelector", keys["nodeSelector"])
        devices: list[Device] = []
        devices_node = keys.get("devices")
        if devices_node is not None:
            if isinstance(devices_node, SequenceNode):
                for i, item in enumerate(devices_node.value):
                    device = self.device(f"{path}.devices[{i}]", item)
                    if device is not None:
                        devices.append(device)
            else:
                hint = "; write `devices: []` for none" if tag(devices_node).endswith("null") else ""
                self.error(
                    f"{path}.devices",
                    devices_node,
                    f"expected a list of devices, got {describe(devices_node)}{hint}",
                )
        return DeviceMapping(hosts=tuple(hosts), devices=tuple(devices), node_selector=selector)

    def hosts(self, path: str, node: Node) -> list[str]:
        if not isinstance(node, SequenceNode):
            self.error(path, node, f"expected a list of node names, got {describe(node)}")
            return []
        if not node.value:
            self.error(path, node, "empty list; name at least one node, for example `hosts: [node-1]`")
        hosts: list[str] = []
        for i, item in enumerate(node.value):
            sub = f"{path}[{i}]"
            if not isinstance(item, ScalarNode) or tag(item) != STR:
                self.error(sub, item, f"a node name must be a string, got {describe(item)}; quote it")
                continue
            host = item.value.lower()
            if not node_name_ok(host):
                self.error(
                    sub,
                    item,
                    f"`{item.value}` is not a valid node name (a DNS subdomain such as `lab1-host1`)",
                )
                continue
            hosts.append(host)
        return hosts

    def device(self, path: str, node: Node) -> Device | None:
        if not isinstance(node, MappingNode):
            self.error(
                path,
                node,
                f"expected a device mapping with `resourceName` and `instanceID`, got {describe(node)}",
            )
            return None
        keys = self.keys(path, node, _DEVICE_KEYS, ("resourceName", "instanceID"))
        resource = self.resource_name(f"{path}.resourceName", keys.get("resourceName"))
        instance = self.instance_id(f"{path}.instanceID", keys.get("instanceID"))
        env = self.env(f"{path}.env", keys.get("env"))
        errors = len(self.errors)
        health = hostdevices.health_check(self, f"{path}.healthCheck", keys.get("healthCheck"))
        nodes = self.items(
            f"{path}.deviceNodes", keys.get("deviceNodes"), lambda p, n: hostdevices.device_node(self, p, n)
        )
        mounts = self.items(f"{path}.mounts", keys.get("mounts"), lambda p, n: hostdevices.mount(self, p, n))
        annotations = hostdevices.device_annotations(self, f"{path}.annotations", keys.get("annotations"))
        cdi = self.items(
            f"{path}.cdiDevices", keys.get("cdiDevices"), lambda p, n: hostdevices.cdi_name(self, p, n)
        )
        seats = hostdevices.capacity(self, f"{path}.capacity", keys.get("capacity"))
        if resource is None or instance is None or env is None or seats is None or len(self.errors) > errors:
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
            capacity=seats,
        )
        conflict = self.index.add(
            device, Place(path, node), Place(f"{path}.resourceName", keys["resourceName"])
        )
        if conflict is not None:
            first = conflict[1]
            self.error(
                path,
                node,
                f"device {resource} {instance!r} is also defined at {first.path} "
                f"(line {first.line}) with a different env or settings; every occurrence of a "
                "device must be identical",
            )
        return device

    def resource_name(self, path: str, node: Node | None) -> str | None:
        name = self.string(path, node, "resourceName")
        if name is None:
            return None
        problem = extended_resource_name_problem(name)
        if problem is not None:
            self.error(path, node, f"`{name}` is not a valid extended resource name: {problem}")
            return None
        return name

    def instance_id(self, path: str, node: Node | None) -> str | None:
        if node is None:
            return None
        if isinstance(node, ScalarNode) and tag(node) in (INT, FLOAT):
            self.error(
                path,
                node,
                f"instanceID is an unquoted number ({node.value} would lose its exact spelling); "
                f'quote it: instanceID: "{node.value}"',
            )
            return None
        value = self.string(path, node, "instanceID")
        if value is None:
            return None
        problem = instance_id_problem(value)
        if problem is not None:
            self.error(path, node, problem)
            return None
        return value

    def env(self, path: str, node: Node | None) -> tuple[tuple[str, str], ...] | None:
        if node is None or is_null(node):
            return ()
        if not isinstance(node, MappingNode):
            self.error(path, node, f"env must be a mapping of names to values, got {describe(node)}")
            return None
        env: dict[str, str] = {}
        ok = True
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            sub = f"{path}.{key}"
            if not isinstance(key_node, ScalarNode) or tag(key_node) != STR:
                self.error(
                    sub,
                    key_node,
                    f"env names must be strings matching [A-Za-z_][A-Za-z0-9_]*, got {describe(key_node)}",
                )
                ok = False
                continue
            problem = env_key_problem(key_node.value)
            if problem is not None:
                self.error(sub, key_node, problem)
                ok = False
                continue
            if key in env:
                self.error(sub, key_node, f"duplicate env name `{key}`")
                ok = False
                continue
            value = self.env_value(sub, value_node)
            if value is None:
                ok = False
                continue
            env[key_node.value] = value
        return tuple(sorted(env.items())) if ok else None

    def env_value(self, path: str, node: Node) -> str | None:
        if isinstance(node, ScalarNode):
            kind = tag(node)
            if kind == STR:
                problem = env_value_problem(node.value)
                if problem is not None:
                    self.error(path, node, problem)
                    return None
                return str(node.value)
            if kind == INT:
                return str(parse_int(node.value))
            self.error(
                path,
                node,
                f"env value `{node.value}` is {describe(node)}; "
                f'quote it if you mean the text: "{node.value}"',
            )
            return None
        self.error(path, node, f"env value must be a string or an integer, got {describe(node)}")
        return None
