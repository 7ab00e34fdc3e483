"""What DRA mode asks of a configuration beyond SPEC §1: the resource.k8s.io/v1 limits (pure).

A device is published as a ResourceSlice device whose attributes are its resource
name, its instance ID and one string attribute per env key (docs/dra.md). The API
server refuses a slice whose attribute name is longer than a C identifier of 32
characters, whose string value is longer than 64 bytes, or whose device has more than
32 attributes; so ``spookd validate --dra`` and the publisher refuse such a
configuration up front, each problem with its line, column and YAML path, instead of
the API server refusing a whole slice later.
"""

from __future__ import annotations

from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from spookd.config.model import Config, ConfigError, ConfigInvalid

#: resource.k8s.io/v1 ResourceSliceMaxAttributesAndCapacitiesPerDevice.
MAX_ATTRIBUTES = 32
#: resource.k8s.io/v1 DeviceMaxIDLength: the C identifier of an attribute name.
MAX_ATTRIBUTE_ID = 32
#: resource.k8s.io/v1 DeviceAttributeMaxValueLength, in bytes.
MAX_ATTRIBUTE_VALUE = 64
#: The attributes every device carries besides its env keys (resource, instanceID).
BUILTIN_ATTRIBUTES = ("resource", "instanceID")
#: A label value's limit: nodes that share a device are selected by ``kubernetes.io/hostname``.
MAX_LABEL_VALUE = 63
#: Env keys a device may have in DRA mode.
MAX_ENV_KEYS = MAX_ATTRIBUTES - len(BUILTIN_ATTRIBUTES)


def dra_problems(config: Config) -> list[tuple[str, str]]:
    """(YAML path, message) of every DRA-only problem of a valid configuration, in file order."""
    problems: list[tuple[str, str]] = []
    shared = _shared_hosts(config)
    mentions: dict[tuple[str, str], int] = {}
    for mapping in config.mappings:
        for device in mapping.devices:
            ident = (device.resource_name, device.instance_id)
            mentions[ident] = mentions.get(ident, 0) + 1
    for i, mapping in enumerate(config.mappings):
        if mapping.node_selector is not None and mapping.hosts:
            problems.append(
                (
                    f"deviceMapping[{i}].nodeSelector",
                    "DRA mode selects a pool's nodes with one node-selector term, so a mapping "
                    "cannot have both `hosts` and `nodeSelector`: split it into two mappings",
                )
            )
        for k, host in enumerate(mapping.hosts):
            if host in shared and len(host) > MAX_LABEL_VALUE:
                problems.append(
                    (
                        f"deviceMapping[{i}].hosts[{k}]",
                        f"node name `{host}` is {len(host)} characters and shares a device with other "
                        f"nodes; DRA mode selects such nodes by their `kubernetes.io/hostname` label, "
                        f"whose values have at most {MAX_LABEL_VALUE}: use a shorter node name",
                    )
                )
        for j, device in enumerate(mapping.devices):
            path = f"deviceMapping[{i}].devices[{j}]"
            if mapping.node_selector is not None and mentions[(device.resource_name, device.instance_id)] > 1:
                problems.append(
                    (
                        f"{path}.instanceID",
                        f"device `{device.instance_id}` of a nodeSelector mapping is listed by another "
                        "mapping too; DRA mode publishes it with one node-selector term: list it once",
                    )
                )
            if device.capacity > 1:
                problems.append(
                    (
                        f"{path}.capacity",
                        f"capacity {device.capacity}: DRA mode allocates a device to one claim at a "
                        "time and does not publish seats yet: leave capacity out for DRA mode",
                    )
                )
            size = len(device.resource_name.encode())
            if size > MAX_ATTRIBUTE_VALUE:
                problems.append(
                    (
                        f"{path}.resourceName",
                        f"resource name is {size} bytes; DRA mode publishes it as an attribute "
                        f"of at most {MAX_ATTRIBUTE_VALUE} bytes: shorten it",
                    )
                )
            if len(device.env) > MAX_ENV_KEYS:
                problems.append(
                    (
                        f"{path}.env",
                        f"{len(device.env)} env keys; DRA mode allows at most {MAX_ENV_KEYS} per device "
                        f"(a ResourceSlice device has at most {MAX_ATTRIBUTES} attributes, "
                        f"{len(BUILTIN_ATTRIBUTES)} of them Spookd's own): move some to fewer keys",
                    )
                )
            for key, value in device.env:
                if len(key) > MAX_ATTRIBUTE_ID:
                    problems.append(
                        (
                            f"{path}.env.{key}",
                            f"env name `{key}` is {len(key)} characters; DRA mode publishes it as an "
                            f"attribute name of at most {MAX_ATTRIBUTE_ID}: shorten it",
                        )
                    )
                size = len(value.encode())
                if size > MAX_ATTRIBUTE_VALUE:
                    problems.append(
                        (
                            f"{path}.env.{key}",
                            f"env value of `{key}` is {size} bytes; DRA mode publishes it as an "
                            f"attribute value of at most {MAX_ATTRIBUTE_VALUE} bytes: shorten it",
                        )
                    )
    return problems


def _shared_hosts(config: Config) -> set[str]:
    """Hosts that share at least one device with another host."""
    hosts: dict[tuple[str, str], set[str]] = {}
    for mapping in config.mappings:
        for device in mapping.devices:
            hosts.setdefault((device.resource_name, device.instance_id), set()).update(mapping.hosts)
    return {host for names in hosts.values() if len(names) > 1 for host in names}


def dra_errors(config: Config, root: Node | None, source: str) -> list[ConfigError]:
    """``dra_problems`` as ConfigErrors placed in the node tree ``root`` (the top without one)."""
    errors = []
    for path, message in dra_problems(config):
        line, column = locate(root, path) if root is not None else (1, 1)
        errors.append(ConfigError(source, line, column, path, message))
    return errors


def locate(root: Node, path: str) -> tuple[int, int]:
    """Line and column (1-based) of the node at a YAML path such as ``a[0].b.c``.

    Where the path leaves the tree, the deepest node reached is the answer.
    """
    node = root
    for step in _steps(path):
        child = _child(node, step)
        if child is None:
            break
        node = child
    return node.start_mark.line + 1, node.start_mark.column + 1


def _steps(path: str) -> list[str | int]:
    steps: list[str | int] = []
    for part in path.split("."):
        name, _, rest = part.partition("[")
        if name:
            steps.append(name)
        for index in rest.replace("]", "").split("[") if rest else ():
            steps.append(int(index))
    return steps


def _child(node: Node, step: str | int) -> Node | None:
    if isinstance(step, int):
        if isinstance(node, SequenceNode) and step < len(node.value):
            child: Node = node.value[step]
            return child
        return None
    if isinstance(node, MappingNode):
        for key, value in node.value:
            if isinstance(key, ScalarNode) and key.value == step:
                # An env key's problem is the key's; other paths point at the value.
                found: Node = key if isinstance(value, ScalarNode) else value
                return found
    return None


def check_dra(config: Config, text: str | bytes, source: str) -> None:
    """Raise ConfigInvalid listing every DRA-only problem of ``config`` (loaded from ``text``)."""
    if not dra_problems(config):
        return
    from spookd.config.load import checked_text, compose_config

    root = compose_config(checked_text(text, source), source)
    raise ConfigInvalid(dra_errors(config, root, source))
