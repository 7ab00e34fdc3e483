"""The holder's side of a claim: renew each Lease every third of its duration, give it up when overdue."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import anyio
from loguru import logger

from spookd.kube.leaseapi import LeaseApi
from spookd.kube.leaserecords import Key, json_lease_record, lease_name
from spookd.leasing import Holding, LeaseBook
from spookd.mailbox import Gate


class Renewal:
    """What :class:`spookd.kube.leases.LeaseClaims` does for the Leases it holds."""

    held: dict[Key, Holding]
    book: LeaseBook
    leases: LeaseApi
    lease_duration: float
    clock: Callable[[], float]
    _busy: Gate

    def _publish_blocked(self) -> None:
        raise NotImplementedError

    def _lose(self, key: Key, why: str) -> None:
        self.held.pop(key, None)
        logger.error(
            "lost the claim on {resource} device {device} ({why}); another node may hold it now, "
            "and a container here may still use it",
            resource=key[0],
            device=key[1],
            why=why,
        )
        self._publish_blocked()

    async def _renew(self) -> bool:
        """Renew every claim; False if a renewal could not reach the API server."""
        reached = True
        for key, held in list(self.held.items()):
            if held.lapsed(self.clock()):
                self._lose(key, f"not renewed for the Lease duration of {self.lease_duration:g} s")
                continue
            resource, device_id = key
            name = lease_name(resource, device_id)
            body = self.leases.body(resource, device_id, held.resource_version)
            sent_at = self.clock()
            try:
                # A renewal that takes longer than a third of the duration is retried
                # rather than waited for: the claim must not lapse behind one slow call.
                status, lease = await self.leases.call(
                    "PUT", self.leases.path(name), body, request_timeout=max(1.0, self.lease_duration / 3)
                )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                logger.warning("cannot renew device claims: {error}", error=str(exc) or type(exc).__name__)
                reached = False
                continue
            if self.held.get(key) is not held:
                continue  # released meanwhile
            if status < 300:
                try:
                    record = json_lease_record(lease)
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    logger.warning("malformed answer to a Lease renewal ({error})", error=str(exc))
                    reached = False
                    continue
                held.renewed(record.resource_version, sent_at)
                self.book.observe(key, record, self.clock())
                continue
            if status >= 500 or status == 429:
                logger.warning("cannot renew device claims: HTTP {status}", status=status)
                reached = False
                continue
            self._lose(key, f"HTTP {status}")
        return reached

    async def _renew_loop(self) -> None:
        interval = self.lease_duration / 3
        delay = interval
        while True:
            await self._busy.wait()
            await anyio.sleep(delay)
            # After a failed renewal, retry soon: the Lease must be renewed before
            # other nodes have seen it unchanged for its whole duration.
            delay = interval if await self._renew() else min(interval, max(0.2, self.lease_duration / 15))
