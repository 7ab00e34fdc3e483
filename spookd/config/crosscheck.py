"""The checks across a whole configuration: one device, one definition; no two
resources setting the same environment variable in one container (SPEC §1, §5)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from spookd.config.model import Device
from spookd.naming import ID_KEY, env_prefix, env_suffixes

#: Where a device or resource was found: a position for messages, or nothing.
P = TypeVar("P")


class DeviceIndex(Generic[P]):
    """Every device seen so far, by identity and by resource."""

    def __init__(self) -> None:
        # (resourceName, instanceID) -> (device, place of its first occurrence)
        self.seen: dict[tuple[str, str], tuple[Device, P]] = {}
        self.resource_places: dict[str, P] = {}
        self.resource_keys: dict[str, set[str]] = {}

    def add(self, device: Device, place: P, name_place: P) -> tuple[Device, P] | None:
        """Record ``device``; an earlier, different definition of it and its place, if any."""
        key = (device.resource_name, device.instance_id)
        previous = self.seen.get(key)
        if previous is None:
            self.seen[key] = (device, place)
        resource = device.resource_name
        keys = self.resource_keys.get(resource)
        if keys is None:
            keys = self.resource_keys[resource] = set()
            self.resource_places[resource] = name_place
        for name, _ in device.env:
            keys.add(name)
        return previous if previous is not None and previous[0] != device else None

    def collisions(self) -> Iterator[tuple[str, str, str]]:
        """(resource, earlier resource, variable) for each pair that would set one variable."""
        # how many devices one container may get: every seat of every device
        counts: dict[str, int] = {}
        for (resource, _), (device, _) in self.seen.items():
            counts[resource] = counts.get(resource, 0) + device.capacity
        return prefix_collisions(counts, self.resource_keys)


def prefix_collisions(
    counts: Mapping[str, int], resource_keys: Mapping[str, Iterable[str]]
) -> Iterator[tuple[str, str, str]]:
    """(resource, earlier resource, variable) for each pair that would set one variable.

    ``counts`` gives how many devices (seats) of each resource one container may get, ``resource_keys`` the
    env keys its devices set. Two prefixes collide when equal (``a.b/x`` and ``ab/x``),
    or when one resource's names, after its prefix, spell another's (``e.com/x`` with
    key ``FOO_ID`` and ``e.com/x-foo``'s own ``ID``).
    """
    by_prefix: dict[str, str] = {}
    for resource in sorted(counts):
        prefix = env_prefix(resource)
        other = by_prefix.get(prefix)
        if other is not None:
            yield resource, other, f"{prefix}_{ID_KEY}"
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
            taken = set(env_suffixes(counts[other], resource_keys.get(other, ())))
            for suffix in env_suffixes(counts[resource], resource_keys.get(resource, ())):
                if f"{rest}_{suffix}" in taken:
                    yield resource, other, f"{prefix}_{suffix}"
                    break
