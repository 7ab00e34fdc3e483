"""Cross-host device claims as the device plugin sees them (implemented in spookd.kube.leases)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from spookd.mailbox import Latest


class ClaimRefused(Exception):
    """The device is held by another node, or the claim lost a race."""


class Claims(Protocol):
    """Claims on devices shared between hosts."""

    #: This node's name: the holder its claims write.
    node_name: str

    def is_shared(self, resource: str, device_id: str) -> bool:
        """True when allocating this device needs a claim."""

    async def claim(self, resource: str, device_ids: Iterable[str]) -> None:
        """Claim every shared device among ``device_ids``, or none: raise ClaimRefused."""


class SharedClaims(Claims, Protocol):
    """Cross-host claims as the servers' owner drives them."""

    def set_shared(self, shared: frozenset[tuple[str, str]]) -> None:
        """This node's devices that need claims now."""

    async def run(self) -> None:
        """Renew, release and watch claims until cancelled."""


class BlockedDevices:
    """Which devices of each resource another node holds; the servers follow the newest map."""

    def __init__(self) -> None:
        self._by_resource: dict[str, frozenset[str]] = {}
        self.changes: Latest[dict[str, frozenset[str]]] = Latest()

    def update(self, resource: str, device_ids: Iterable[str]) -> None:
        """Devices of ``resource`` held elsewhere now."""
        ids = frozenset(device_ids)
        if self._by_resource.get(resource, frozenset()) == ids:
            return
        if ids:
            self._by_resource[resource] = ids
        else:
            self._by_resource.pop(resource, None)
        self.changes.put(dict(self._by_resource))

    def get(self, resource: str) -> set[str]:
        """Devices of ``resource`` held elsewhere now."""
        return set(self._by_resource.get(resource, ()))
