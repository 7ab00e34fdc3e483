"""What a plugin server needs from cross-host device claims (implemented in spookd.kube.leases)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class ClaimRefused(Exception):
    """The device is held by another node, or the claim lost a race."""


class Claims(Protocol):
    """Claims on devices shared between hosts."""

    def is_shared(self, resource: str, device_id: str) -> bool:
        """True when allocating this device needs a claim."""

    async def claim(self, resource: str, device_ids: Iterable[str]) -> None:
        """Claim every shared device among ``device_ids``, or none: raise ClaimRefused."""
