"""The holder's side of a claim: renew each Lease at 0.7 of its duration, retry, give it up when overdue."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import anyio
from loguru import logger

from spookd.kube.leaseapi import LeaseApi
from spookd.kube.leaserecords import Key, json_lease_record, lease_name
from spookd.leasing import Cadence, Holding, LeaseBook
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

    async def _renew(self) -> None:
        """Renew every claim that is due (spookd.leasing.Cadence); a failed try is tried again soon."""
        cadence = Cadence(self.lease_duration)
        for key, held in list(self.held.items()):
            if held.lapsed(self.clock()):
                self._lose(key, f"not renewed for the Lease duration of {self.lease_duration:g} s")
                continue
            if not held.due(self.clock()):
                continue
            resource, device_id = key
            name = lease_name(resource, device_id)
            body = self.leases.body(resource, device_id, held.resource_version)
            sent_at = self.clock()
            try:
                # A try that takes longer than its share is abandoned for a new one rather
                # than waited for: the claim must not lapse behind one hung connection.
                status, lease = await self.leases.call(
                    "PUT", self.leases.path(name), body, request_timeout=cadence.try_timeout
                )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                logger.warning("cannot renew device claims: {error}", error=str(exc) or type(exc).__name__)
                held.failed(self.clock())
                continue
            if self.held.get(key) is not held:
                continue  # released meanwhile
            if status < 300:
                try:
                    record = json_lease_record(lease)
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    logger.warning("malformed answer to a Lease renewal ({error})", error=str(exc))
                    held.failed(self.clock())
                    continue
                held.renewed(record.resource_version, sent_at)
                self.book.observe(key, record, self.clock())
                continue
            if status >= 500 or status == 429:
                logger.warning("cannot renew device claims: HTTP {status}", status=status)
                held.failed(self.clock())
                continue
            self._lose(key, f"HTTP {status}")

    async def _renew_loop(self) -> None:
        cadence = Cadence(self.lease_duration)
        while True:
            await self._busy.wait()
            # Each claim is renewed on its own schedule: one taken a moment ago is not
            # renewed along with an older one (one write per claim per 0.7 duration).
            # A claim taken while this sleeps is due later than anything waited for.
            wake = min(
                (held.next_renewal() for held in self.held.values()),
                default=self.clock() + cadence.renew_after,
            )
            await anyio.sleep(max(0.0, wake - self.clock()))
            await self._renew()
