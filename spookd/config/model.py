"""The configuration model: what a validated configuration holds."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from spookd.config.labels import LabelSelector
from spookd.naming import seat_ids

# The device structs are frozen and hold only strings, numbers and tuples of them, so
# they can be in no reference cycle: the collector never tracks them (gc=False), which
# keeps a 10 000-device configuration out of its passes (docs/design.md, "Footprint").

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"


class HealthCheck(msgspec.Struct, frozen=True, order=True, gc=False):
    """How to tell whether a device is usable: a TCP connect, or a path that must exist."""

    tcp: str | None = None
    path: str | None = None
    interval: float = 10.0
    timeout: float = 1.0
    failure_threshold: int = 3
    success_threshold: int = 1


class DeviceNode(msgspec.Struct, frozen=True, order=True, gc=False):
    """A host device file handed to the container."""

    host_path: str
    container_path: str
    permissions: str = "rw"


class Mount(msgspec.Struct, frozen=True, order=True, gc=False):
    """A host path mounted into the container."""

    host_path: str
    container_path: str
    read_only: bool = False


class Device(msgspec.Struct, frozen=True, order=True, gc=False):
    """One virtual device: identified by (resource_name, instance_id)."""

    resource_name: str
    instance_id: str
    env: tuple[tuple[str, str], ...] = ()
    health_check: HealthCheck | None = None
    device_nodes: tuple[DeviceNode, ...] = ()
    mounts: tuple[Mount, ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    cdi_devices: tuple[str, ...] = ()
    #: How many containers may hold the device at once; each is a seat (spookd.naming).
    capacity: int = 1

    def seats(self) -> list[str]:
        """The kubelet device IDs this device is advertised as, one per seat."""
        return seat_ids(self.instance_id, self.capacity)


class DeviceMapping(msgspec.Struct, frozen=True):
    """A set of hosts (lower-cased node names) and the devices they all get."""

    hosts: tuple[str, ...]
    devices: tuple[Device, ...]
    #: Nodes whose labels match also get the devices (besides ``hosts``).
    node_selector: LabelSelector | None = None

    def applies_to(self, node: str, labels: Mapping[str, str] | None) -> bool:
        """Whether the lower-cased ``node``, with ``labels`` (None: not known yet), gets the devices."""
        if node in self.hosts:
            return True
        return self.node_selector is not None and labels is not None and self.node_selector.matches(labels)


#: What one node should advertise: ``{resource_name: {instance_id: Device}}``.
NodeDevices = Mapping[str, Mapping[str, Device]]


class Config(msgspec.Struct, frozen=True):
    """A whole validated configuration."""

    mappings: tuple[DeviceMapping, ...] = ()
    #: Devices listed for several hosts are held by one node at a time (SPEC §10).
    exclusive: bool = False

    def for_node(
        self, node_name: str, labels: Mapping[str, str] | None = None
    ) -> dict[str, dict[str, Device]]:
        """The union of the devices of every mapping that lists ``node_name`` or selects its ``labels``."""
        node = node_name.lower()
        desired: dict[str, dict[str, Device]] = {}
        for mapping in self.mappings:
            if mapping.applies_to(node, labels):
                for device in mapping.devices:
                    desired.setdefault(device.resource_name, {})[device.instance_id] = device
        return desired

    def shared_devices(self) -> frozenset[tuple[str, str]]:
        """(resource, seat ID) of devices that need cross-host claims: listed for several
        hosts while ``exclusive`` is on; empty otherwise. Each seat is claimed on its own,
        so a device of capacity N has at most N holders cluster-wide."""
        if not self.exclusive:
            return frozenset()
        hosts: dict[tuple[str, str], set[str]] = {}
        devices: dict[tuple[str, str], Device] = {}
        for mapping in self.mappings:
            # A selector may match any number of nodes: its devices are shared.
            names = (*mapping.hosts, "", " ") if mapping.node_selector is not None else mapping.hosts
            for device in mapping.devices:
                key = (device.resource_name, device.instance_id)
                hosts.setdefault(key, set()).update(names)
                devices[key] = device
        return frozenset(
            (resource, seat)
            for (resource, instance), names in hosts.items()
            if len(names) > 1
            for seat in devices[resource, instance].seats()
        )

    def uses_labels(self) -> bool:
        """Some mapping selects nodes by label: the node's labels must be read from the API."""
        return any(mapping.node_selector is not None for mapping in self.mappings)

    def nodes(self) -> list[str]:
        """Every node name the configuration mentions, sorted."""
        return sorted({host for mapping in self.mappings for host in mapping.hosts})


class ConfigError(msgspec.Struct, frozen=True):
    """One problem in a configuration, with its place and a hint at the fix."""

    source: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.source}:{self.line}:{self.column}: {where}{self.message}"


class ConfigInvalid(Exception):
    """A configuration was rejected; ``errors`` lists every problem found."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))
