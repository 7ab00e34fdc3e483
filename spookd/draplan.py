"""DRA mode, how to get there: the ordered writes from the published slices to the desired ones (pure).

A device is never published twice: every write that takes a device out of a pool
(a pool deleted, or a pool that loses devices, written with only the devices it keeps)
comes in the first phase, every write that adds a device in the second, and the
shell finishes the first phase before it starts the second. A device that moves from
pool A to pool B is therefore unpublished from A before B shows it; a swap between
two pools costs each pool one extra generation. Within one pool the generation
decides (consumers use only the slices of a pool's highest generation), so moving a
device between slices of one pool needs no order. A pool whose slices already say
what is desired (same fingerprint, one generation, the same slice names) is not
written at all, so a restarted publisher or a new leader writes nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from spookd.draslices import (
    DRIVER,
    FINGERPRINT,
    TAINT_KEY,
    DeviceKey,
    Pool,
    device_key,
    pool_fingerprint,
    pool_slices,
)


@dataclass(frozen=True)
class PoolState:
    """What the cluster holds for one pool of this driver."""

    generation: int = 0
    fingerprints: frozenset[str] = frozenset()
    generations: frozenset[int] = frozenset()
    slices: frozenset[str] = frozenset()
    devices: frozenset[DeviceKey] = frozenset()


@dataclass(frozen=True)
class WritePool:
    """Create or replace ``slices`` (in order), then delete the slices named in ``stale``."""

    pool: str
    slices: tuple[dict[str, Any], ...] = ()
    stale: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """The writes of phase one (only removals) and phase two (the rest)."""

    remove: list[WritePool] = field(default_factory=list)
    add: list[WritePool] = field(default_factory=list)

    def empty(self) -> bool:
        """Nothing to write."""
        return not self.remove and not self.add


def pool_states(slices: Iterable[Mapping[str, Any]], driver: str = DRIVER) -> dict[str, PoolState]:
    """The published pools of ``driver``, from ResourceSlice objects (JSON dicts)."""
    found: dict[str, dict[str, Any]] = {}
    for obj in slices:
        spec = obj.get("spec") or {}
        if spec.get("driver") != driver:
            continue
        pool = spec.get("pool") or {}
        name = pool.get("name")
        if not isinstance(name, str):
            continue
        entry = found.setdefault(name, {"gens": set(), "fps": set(), "names": set(), "devices": set()})
        generation = pool.get("generation")
        entry["gens"].add(int(generation) if isinstance(generation, int) else 0)
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        entry["fps"].add(str(annotations.get(FINGERPRINT, "")))
        entry["names"].add(str((obj.get("metadata") or {}).get("name", "")))
        for device in spec.get("devices") or []:
            key = device_key(device, driver)
            if key is not None:
                entry["devices"].add(key)
    return {
        name: PoolState(
            generation=max(e["gens"]),
            fingerprints=frozenset(e["fps"]),
            generations=frozenset(e["gens"]),
            slices=frozenset(e["names"]),
            devices=frozenset(e["devices"]),
        )
        for name, e in sorted(found.items())
    }


def _names(slices: list[dict[str, Any]]) -> set[str]:
    return {str(s["metadata"]["name"]) for s in slices}


def plan(
    current: Mapping[str, PoolState],
    desired: Mapping[str, Pool],
    unhealthy: Collection[DeviceKey] = (),
    driver: str = DRIVER,
) -> Plan:
    """The writes that make ``current`` into ``desired`` without publishing a device twice."""
    result = Plan()
    after: dict[str, PoolState] = {}
    for name, state in current.items():
        pool = desired.get(name)
        if pool is None:
            result.remove.append(WritePool(name, (), tuple(sorted(state.slices))))
            continue
        if not state.devices - pool.keys():
            after[name] = state
            continue
        kept = pool.only(state.devices)
        generation = state.generation + 1
        if not kept.devices:
            result.remove.append(WritePool(name, (), tuple(sorted(state.slices))))
            after[name] = PoolState(generation=generation)
            continue
        slices = pool_slices(kept, generation, unhealthy, driver)
        result.remove.append(WritePool(name, tuple(slices), tuple(sorted(state.slices - _names(slices)))))
        after[name] = PoolState(
            generation=generation,
            fingerprints=frozenset({pool_fingerprint(kept, unhealthy, driver)}),
            generations=frozenset({generation}),
            slices=frozenset(_names(slices)),
            devices=kept.keys(),
        )
    for name, pool in desired.items():
        state = after.get(name, PoolState())
        fingerprint = pool_fingerprint(pool, unhealthy, driver)
        generation = state.generation + 1
        slices = pool_slices(pool, generation, unhealthy, driver)
        if (
            state.fingerprints == {fingerprint}
            and len(state.generations) == 1
            and state.slices == _names(slices)
        ):
            continue
        result.add.append(WritePool(name, tuple(slices), tuple(sorted(state.slices - _names(slices)))))
    return result


def published_taints(slices: Iterable[Mapping[str, Any]], driver: str = DRIVER) -> set[DeviceKey]:
    """Devices published with Spookd's health taint."""
    tainted = set()
    for obj in slices:
        spec = obj.get("spec") or {}
        if spec.get("driver") != driver:
            continue
        for device in spec.get("devices") or []:
            key = device_key(device, driver)
            if key is not None and any(t.get("key") == TAINT_KEY for t in device.get("taints") or []):
                tainted.add(key)
    return tainted
