"""What Allocate and GetPreferredAllocation answer (SPEC §5). Pure: no I/O."""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Collection, Iterable, Mapping, Sequence

import msgspec

from spookd.config.model import Device, DeviceNode, Mount
from spookd.naming import COUNT_KEY, ID_KEY, TYPE_KEY, env_prefix, numbered, seat_of

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
    available: Iterable[str],
    must_include: Iterable[str],
    size: int,
    *,
    avoid: Collection[str] = (),
    capacity: Mapping[str, int] | None = None,
    first_seat: int = 0,
) -> list[str]:
    """``must_include`` first, then the other available IDs up to ``size``, spread over devices.

    IDs are seats (spookd.naming): each next pick is a seat of the device with the fewest
    seats taken so far (held here or elsewhere, or already picked), then the fewest picked
    for this container, then the lowest instance ID and seat; so distinct devices come
    before a second seat of one. Without
    seats (every ``capacity`` 1) this is the lowest-sorted IDs. IDs in ``avoid`` (held by
    another node) come only after every other one. ``first_seat`` turns the order of a
    device's seats (seat ``first_seat % N + 1`` first): nodes that share a device under
    ``exclusive`` each start elsewhere, so that two claims at one moment rarely meet.
    """
    chosen = list(dict.fromkeys(must_include))
    picked = set(chosen)
    wanted = size - len(chosen)
    candidates = set(available) - picked
    if wanted <= 0 or not candidates:
        return chosen
    seats = {i: seat_of(i) for i in candidates}
    capacities = capacity or {}
    free: dict[str, int] = {}
    for device_id, (instance, _) in seats.items():
        if device_id not in avoid:
            free[instance] = free.get(instance, 0) + 1
    # taken = seats that are neither available nor held elsewhere-and-offered, by device
    taken = {instance: capacities.get(instance, 1) - count for instance, count in free.items()}
    here: dict[str, int] = {}
    for device_id in chosen:
        instance = seat_of(device_id)[0]
        here[instance] = here.get(instance, 0) + 1
        if instance in taken:
            taken[instance] += 1
    ranked = [
        (i in avoid, instance, (seat - 1 - first_seat) % capacities.get(instance, 1), i)
        for i, (instance, seat) in seats.items()
    ]
    if not capacities or all(n == 1 for n in capacities.values()):
        ranked.sort()
        chosen.extend(entry[3] for entry in ranked[:wanted])
        return chosen
    # Spread: a seat waits behind the seats of devices with fewer seats taken.
    pending: dict[str, list[tuple[bool, str, int, str]]] = {}
    for entry in sorted(ranked):
        pending.setdefault(entry[1], []).append(entry)
    while wanted > 0 and pending:
        instance = min(pending, key=lambda d: (pending[d][0][0], taken.get(d, 0), here.get(d, 0), d))
        entry = pending[instance].pop(0)
        if not pending[instance]:
            del pending[instance]
        chosen.append(entry[3])
        here[instance] = here.get(instance, 0) + 1
        if instance in taken:
            taken[instance] += 1
        wanted -= 1
    return chosen


def seat_offset(node_name: str) -> int:
    """A stable number for a node: where its preference starts among a device's seats."""
    return int.from_bytes(hashlib.sha256(node_name.encode()).digest()[:4], "big")
