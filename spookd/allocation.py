"""What Allocate and GetPreferredAllocation answer (SPEC §5). Pure: no I/O."""

from __future__ import annotations

import operator
from collections.abc import Collection, Iterable, Sequence

import msgspec

from spookd.config.model import Device, DeviceNode, Mount
from spookd.naming import COUNT_KEY, ID_KEY, TYPE_KEY, env_prefix, numbered

_instance_id = operator.attrgetter("instance_id")


class HostDevices(msgspec.Struct, frozen=True):
    """What a container gets from the host besides its environment."""

    device_nodes: tuple[DeviceNode, ...] = ()
    mounts: tuple[Mount, ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    cdi_devices: tuple[str, ...] = ()


def host_devices(devices: Sequence[Device]) -> HostDevices:
    """Device nodes, mounts, annotations and CDI names of ``devices``, in instance-ID order.

    Repeats are dropped (two devices may share a mount); for an annotation set by
    several devices, the device with the lowest instance ID wins.
    """
    ordered = sorted(devices, key=lambda d: d.instance_id)
    nodes = {n.container_path: n for d in reversed(ordered) for n in d.device_nodes}
    mounts = {m.container_path: m for d in reversed(ordered) for m in d.mounts}
    annotations = {k: v for d in reversed(ordered) for k, v in d.annotations}
    cdi = dict.fromkeys(name for d in ordered for name in d.cdi_devices)
    return HostDevices(
        device_nodes=tuple(sorted(nodes.values(), key=lambda n: n.container_path)),
        mounts=tuple(sorted(mounts.values(), key=lambda m: m.container_path)),
        annotations=tuple(sorted(annotations.items())),
        cdi_devices=tuple(cdi),
    )


def container_env(resource_name: str, devices: Sequence[Device]) -> dict[str, str]:
    """The environment for a container given ``devices`` of one resource.

    Devices are numbered in instance-ID order; device 0 also gets the short names
    without ``_DEV0``.
    """
    short = env_prefix(resource_name) + "_"
    ordered = sorted(devices, key=_instance_id)
    env = {short + COUNT_KEY: str(len(ordered))}
    for index, device in enumerate(ordered):
        names = short + numbered(index)
        env[names + ID_KEY] = device.instance_id
        env[names + TYPE_KEY] = resource_name
        for key, value in device.env:
            env[names + key] = value
    if ordered:
        first = ordered[0]
        env[short + ID_KEY] = first.instance_id
        env[short + TYPE_KEY] = resource_name
        for key, value in first.env:
            env[short + key] = value
    return env


def preferred_allocation(
    available: Iterable[str], must_include: Iterable[str], size: int, avoid: Collection[str] = ()
) -> list[str]:
    """``must_include`` first, then the lowest-sorted other available IDs, up to ``size``.

    IDs in ``avoid`` (held by another node) come only after every other one.
    """
    chosen = list(dict.fromkeys(must_include))
    picked = set(chosen)
    rest = sorted(set(available) - picked, key=lambda i: (i in avoid, i))
    chosen.extend(rest[: max(0, size - len(chosen))])
    return chosen
