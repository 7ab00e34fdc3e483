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
    node_name: str
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
                logger.debug(
                    "renewed",
                    resource=resource,
                    device=device_id,
                    took=round(self.clock() - sent_at, 3),
                    resource_version=record.resource_version,
                )
                continue
            if status >= 500 or status == 429:
                logger.warning("cannot renew device claims: HTTP {status}", status=status)
                held.failed(self.clock())
                continue
            if status == 409 and await self._still_mine(key, held, cadence):
                continue
            self._lose(key, f"HTTP {status}")

    async def _still_mine(self, key: Key, held: Holding, cadence: Cadence) -> bool:
        """After a 409: True if the Lease still names this node (renew again at once, from it).

        A try abandoned at its timeout may still have been applied: the API server then
        holds a newer resourceVersion of this node's own record, and the next try, made
        from the old one, conflicts. Only a record naming another holder (or none) means
        the claim is gone; the claim's age still counts from the last renewal whose answer
        came, so this never extends it.
        """
        try:
            status, lease = await self.leases.call(
                "GET", self.leases.path(lease_name(*key)), request_timeout=cadence.try_timeout
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            logger.warning("cannot renew device claims: {error}", error=str(exc) or type(exc).__name__)
            held.failed(self.clock())
            return True
        if status >= 500 or status == 429:
            held.failed(self.clock())
            return True
        if status != 200:
            return False
        try:
            record = json_lease_record(lease)
        except (KeyError, TypeError, ValueError, AttributeError):
            return False
        self.book.observe(key, record, self.clock())
        if self.held.get(key) is not held:
            return True  # released meanwhile: nothing to renew, nothing lost
        if record.holder != self.node_name:
            return False
        logger.info(
            "a renewal of {resource} device {device} met this node's own newer record (a try "
            "applied unanswered, or another edit of the Lease); renewing from it",
            resource=key[0],
            device=key[1],
        )
        held.resource_version = record.resource_version
        # At once the first time; a second conflict in a row waits like any failed try.
        held.conflicted(self.clock())
        return True

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
