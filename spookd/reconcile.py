"""Desired state versus running state → actions (SPEC §4). Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from spookd.config.model import Device, NodeDevices


class StartResource(msgspec.Struct, frozen=True):
    """Start a plugin server for a new resource and register it."""

    resource_name: str
    devices: tuple[Device, ...]


class UpdateResource(msgspec.Struct, frozen=True):
    """Push one new ListAndWatch snapshot; no restart, no re-registration."""

    resource_name: str
    devices: tuple[Device, ...]


class StopResource(msgspec.Struct, frozen=True):
    """Withdraw a resource: stop its server and remove its socket."""

    resource_name: str


Action = StartResource | UpdateResource | StopResource


def _sorted(devices: Mapping[str, Device]) -> tuple[Device, ...]:
    return tuple(devices[i] for i in sorted(devices))


def diff(desired: NodeDevices, running: NodeDevices) -> list[Action]:
    """The actions that turn ``running`` into ``desired``, in a stable order.

    Stops come first (freeing sockets), then starts, then updates, each sorted by
    resource name. Equal states yield no action.
    """
    actions: list[Action] = [StopResource(resource) for resource in sorted(running.keys() - desired.keys())]
    actions.extend(
        StartResource(resource, _sorted(desired[resource]))
        for resource in sorted(desired.keys() - running.keys())
    )
    actions.extend(
        UpdateResource(resource, _sorted(desired[resource]))
        for resource in sorted(desired.keys() & running.keys())
        if dict(desired[resource]) != dict(running[resource])
    )
    return actions


def summary(actions: list[Action]) -> dict[str, list[str]]:
    """Resource names by kind of change, for logs and Events."""
    out: dict[str, list[str]] = {"added": [], "changed": [], "removed": []}
    for action in actions:
        kind = {StartResource: "added", UpdateResource: "changed", StopResource: "removed"}[type(action)]
        out[kind].append(action.resource_name)
    return out
