"""Leader election through one Lease, expiry judged by observation (the I/O shell).

kubernetes-asyncio 36.1.0 ships ``leaderelection``, but it judges expiry on the wall
clock (``time.time()``), sends its requests without a timeout (a hung request keeps a
leader leading), counts the leader's deadline from after its sleep rather than from
the renewal it sent, and logs through ``logging``; so Spookd keeps client-go's rule
with its own pure pieces (spookd.leasing): a candidate notes on its monotonic clock
when it first saw the current record and takes the Lease only after that record has
stayed unchanged for the Lease duration; the leader stops leading once two thirds of
the duration have passed since it *sent* its last successful renewal, earlier than
any candidate can take over. Every write is conditional on the resourceVersion read.
On shutdown the leader empties ``holderIdentity`` so that a successor takes over at once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from kubernetes_asyncio import client
from loguru import logger

from spookd.kube.leaseapi import LeaseApi
from spookd.kube.leaserecords import now_text
from spookd.leasing import LeaseRecord, Observation

Leading = Callable[[], Awaitable[None]]


class LeaderElection:
    """Runs ``leading`` while this process holds the Lease ``namespace/name``."""

    def __init__(
        self, api: client.ApiClient, namespace: str, name: str, identity: str, duration: float = 15.0
    ) -> None:
        self.leases = LeaseApi(api, namespace, identity, duration, timeout=max(1.0, duration / 6))
        self.name = name
        self.identity = identity
        self.duration = duration
        self.retry = max(0.2, duration / 5)
        self._seen: Observation | None = None
        self._renewed_at: float | None = None
        self._resource_version: str | None = None
        self.leading = False
        #: Times this process became leader.
        self.terms = 0

    def _body(self, holder: str, acquire: str | None) -> dict[str, Any]:
        now = now_text()
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.leases.namespace}
        if self._resource_version:
            metadata["resourceVersion"] = self._resource_version
        spec: dict[str, Any] = {
            "holderIdentity": holder,
            "leaseDurationSeconds": max(1, round(self.duration)),
            "renewTime": now,
            "acquireTime": acquire or now,
        }
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    async def _try(self) -> bool:
        """One round: read the Lease, take or renew it when allowed; True while this process leads."""
        status, lease = await self.leases.call("GET", self.leases.path(self.name))
        now = time.monotonic()
        if status == 404:
            self._resource_version = None
            return await self._write("POST", self.leases.path(), None, now)
        if status != 200:
            logger.warning("reading the leader Lease failed", status=status, lease=self.name)
            return False
        spec = lease.get("spec") or {}
        self._resource_version = (lease.get("metadata") or {}).get("resourceVersion")
        holder = str(spec.get("holderIdentity") or "")
        record = LeaseRecord(
            holder,
            str(spec.get("renewTime") or ""),
            float(spec.get("leaseDurationSeconds") or self.duration),
            str(self._resource_version or ""),
        )
        if self._seen is None or not self._seen.same_record(record):
            self._seen = Observation(record, now)
        if holder != self.identity:
            # Someone else holds it (or nobody): whatever this process held is gone.
            self._renewed_at = None
        mine = holder == self.identity and self._renewed_at is not None
        if holder and not mine and not self._seen.expired(now):
            return False
        acquire = spec.get("acquireTime") if mine else None
        return await self._write("PUT", self.leases.path(self.name), acquire, now)

    async def _write(self, method: str, path: str, acquire: str | None, sent_at: float) -> bool:
        status, answer = await self.leases.call(method, path, self._body(self.identity, acquire))
        if status not in (200, 201):
            return False
        self._resource_version = (answer.get("metadata") or {}).get("resourceVersion")
        self._renewed_at = sent_at
        return True

    def _lapsed(self) -> bool:
        return self._renewed_at is None or time.monotonic() - self._renewed_at >= self.duration * 2 / 3

    async def run(self, leading: Leading) -> None:
        """Campaign forever; run ``leading`` in each term and cancel it when the term ends."""
        try:
            while True:
                await self._campaign()
                self.terms += 1
                self.leading = True
                logger.info("leading", lease=self.name, identity=self.identity, term=self.terms)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._keep, tg.cancel_scope)
                    await leading()
                    tg.cancel_scope.cancel()
                self.leading = False
                logger.warning("stopped leading", lease=self.name, identity=self.identity)
        finally:
            if self.leading:
                with anyio.CancelScope(shield=True), anyio.move_on_after(self.leases.timeout):
                    await self._release()

    async def _campaign(self) -> None:
        while True:
            try:
                if await self._try():
                    return
            except (OSError, TimeoutError) as exc:
                logger.warning("leader election request failed", error=str(exc) or type(exc).__name__)
            await anyio.sleep(self.retry)

    async def _keep(self, term: anyio.CancelScope) -> None:
        """Renew every ``retry``; end the term once the renewal deadline has passed."""
        while not self._lapsed():
            await anyio.sleep(self.retry)
            try:
                await self._try()
            except (OSError, TimeoutError) as exc:
                logger.warning("renewing the leader Lease failed", error=str(exc) or type(exc).__name__)
        self._renewed_at = None
        term.cancel()

    async def _release(self) -> None:
        status, _ = await self.leases.call("PUT", self.leases.path(self.name), self._body("", None))
        logger.info("released the leader Lease", lease=self.name, status=status)
