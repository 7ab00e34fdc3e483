"""Cross-host exclusive devices: one holder cluster-wide, through Leases (SPEC §10).

With ``exclusive: true`` in the configuration, a device listed for several hosts is
advertised on each of them but held by one node at a time. The node whose kubelet
allocates it claims a ``coordination.k8s.io/v1`` Lease named after the device,
with optimistic concurrency (create, or replace at the read resourceVersion), renews
it while any container on the node uses the device (the kubelet's PodResources
API), and deletes it once none has for a grace period. A holder that dies stops
renewing and its Lease expires. Every other node reports the device Unhealthy while
a live Lease names another holder, so the kubelet does not offer it there.

Leases are read by one LIST + WATCH (spookd.kube.watch) into a local cache; whether
a Lease is live is judged by observation on this node's monotonic clock
(spookd.leasing), never by comparing the holder's renewTime with the local clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
import anyio
from kubernetes_asyncio import client
from loguru import logger

from spookd.claims import ClaimRefused
from spookd.kube.leaseapi import LeaseApi
from spookd.kube.leaserecords import (
    DEVICE_LABEL,
    Key,
    answer_record,
    check_answer,
    lease_key,
    lease_name,
    lease_record,
    refusal,
)
from spookd.kube.podresources import PodResourcesReader
from spookd.kube.renewal import Renewal
from spookd.kube.watch import WATCH_SERVER_TIMEOUT, Changed, Listed, ListWatch
from spookd.leasing import Holding, LeaseBook
from spookd.mailbox import Gate

# The defaults of spookd.settings.Tuning, which `spookd run` passes in.
LEASE_DURATION = 15.0
#: A fresh claim is not released before this, even if no container shows it yet.
CLAIM_GRACE = 5.0
#: How often the kubelet's PodResources is read and expiries are judged (no API request).
POLL = 0.5
REQUEST_TIMEOUT = 10

BlockedCallback = Callable[[str, set[str]], None]


class LeaseClaims(Renewal):
    """This node's claims on shared devices, and what other nodes hold."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        node_name: str,
        pod_resources_socket: str,
        on_blocked: BlockedCallback,
        *,
        lease_duration: float = LEASE_DURATION,
        claim_grace: float = CLAIM_GRACE,
        poll: float = POLL,
        watch_timeout: int = WATCH_SERVER_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.watch_timeout = watch_timeout
        self.api = api
        self.namespace = namespace
        self.node_name = node_name
        self.pod_resources_socket = pod_resources_socket
        self.pod_resources = PodResourcesReader(pod_resources_socket, REQUEST_TIMEOUT)
        self.leases = LeaseApi(api, namespace, node_name, lease_duration, REQUEST_TIMEOUT)
        self.on_blocked = on_blocked
        self.lease_duration = lease_duration
        self.claim_grace = claim_grace
        self.poll = poll
        self.clock = clock
        self.shared: frozenset[Key] = frozenset()
        self.held: dict[Key, Holding] = {}
        #: the loops sleep until there is something to claim or hold
        self._busy = Gate(lambda: bool(self.shared or self.held))
        #: Every Spookd Lease seen by the watch, and since when (this node's monotonic clock).
        self.book = LeaseBook()
        #: The watch of the Leases of ``watched`` (None until there are shared devices).
        self.list_watch: ListWatch | None = None
        self.watched: frozenset[Key] = frozenset()
        self._synced = anyio.Event()
        #: Since when (local monotonic time) the Lease watch has been broken, if it is.
        self._blind_since: float | None = None
        #: Set when the devices to watch differ from those watched.
        self._rewatch = anyio.Event()
        self._blocked: dict[str, set[str]] = {}
        self._lock = anyio.Lock()
        self._retry_after: dict[Key, float] = {}

    # -- what the reconciler and the servers ask --------------------------

    def set_shared(self, shared: Iterable[Key]) -> None:
        """The devices of this node that need claims under the current configuration."""
        self.shared = frozenset(shared)
        self._busy.check()
        if self._to_watch() != self.watched:
            self._rewatch.set()
        self._publish_blocked()

    def _to_watch(self) -> frozenset[Key]:
        return self.shared | frozenset(self.held)

    def _list_watch(self, keys: frozenset[Key]) -> ListWatch:
        # Only the Leases of this node's own shared devices: every renewal then reaches
        # the nodes that share that device, not the whole fleet.
        hashes = ",".join(sorted(lease_name(*key).removeprefix("spookd-") for key in keys))
        return ListWatch(
            client.CoordinationV1Api(self.api).list_namespaced_lease,
            self.namespace,
            what="Leases",
            forbidden=(
                f"not allowed to read the device Leases in namespace {self.namespace}; give Spookd's "
                "ServiceAccount get, list, watch, create, update and delete on leases (Helm rbac.exclusive)"
            ),
            server_timeout=self.watch_timeout,
            label_selector=f"app.kubernetes.io/managed-by=spookd,{DEVICE_LABEL} in ({hashes})",
        )

    def is_shared(self, resource: str, device_id: str) -> bool:
        """True when allocating this device needs a claim."""
        return (resource, device_id) in self.shared

    async def claim(self, resource: str, device_ids: Iterable[str]) -> None:
        """Claim every shared device among ``device_ids``, or none (ClaimRefused)."""
        taken: list[str] = []
        try:
            for device_id in device_ids:
                if self.is_shared(resource, device_id) and await self._claim_one(resource, device_id):
                    taken.append(device_id)
        except BaseException:
            with anyio.CancelScope(shield=True):
                for device_id in taken:
                    await self._release(resource, device_id)
            raise

    # -- the lease protocol ------------------------------------------------

    def _own(self, key: Key) -> bool:
        held = self.held.get(key)
        return held is not None and not held.lapsed(self.clock())

    async def _claim_one(self, resource: str, device_id: str) -> bool:
        """Take the device's Lease; True if this call took it (False: already ours)."""
        key = (resource, device_id)
        if self._own(key):
            return False
        name = lease_name(resource, device_id)
        with anyio.move_on_after(REQUEST_TIMEOUT):
            await self._synced.wait()
        if not self._synced.is_set():
            raise self._refusal(resource, device_id, "the device Leases cannot be read yet")
        async with self._lock:
            seen = self.book.get(key)
            sent_at = self.clock()
            if seen is not None and not self.book.may_take(
                key, self.node_name, sent_at, observing=self._observing()
            ):
                raise self._refusal(resource, device_id, f"node {seen.record.holder} holds it")
            status, lease = 404, dict[str, Any]()
            if seen is not None:
                # Replace exactly the record observed: a renewal or another claim since
                # then changes the resourceVersion and this write fails with 409.
                body = self.leases.body(resource, device_id, seen.record.resource_version)
                status, lease = await self.leases.call("PUT", self.leases.path(name), body)
                if status == 409:
                    raise self._refusal(resource, device_id, "another node claimed it at the same moment")
                if status < 300:
                    check_answer(status, lease, "take over")
            if status == 404:
                status, lease = await self.leases.call(
                    "POST", self.leases.path(), self.leases.body(resource, device_id)
                )
                if status == 409:
                    status, lease = await self._adopt(resource, device_id)
                check_answer(status, lease, "create")
            check_answer(status, lease, "take over")
            record = answer_record(lease, "claim")
            self.held[key] = Holding(record.resource_version, sent_at, self.lease_duration, self.clock())
            self._busy.check()
            self.book.observe(key, record, self.clock())
        logger.info("device claimed", resource=resource, device=device_id, lease=f"{self.namespace}/{name}")
        self._publish_blocked()
        return True

    async def _adopt(self, resource: str, device_id: str) -> tuple[int, dict[str, Any]]:
        """The create met a Lease the cache did not show: take it only if it names this node.

        The cache lags a moment behind the API, and Leases written by a Spookd before
        the device label existed are not watched at all: one read tells which.
        """
        name = lease_name(resource, device_id)
        status, lease = await self.leases.call("GET", self.leases.path(name))
        if status == 200:
            record = answer_record(lease, "read")
            self.book.observe((resource, device_id), record, self.clock())
            if record.holder == self.node_name:
                body = self.leases.body(resource, device_id, record.resource_version)
                status, lease = await self.leases.call("PUT", self.leases.path(name), body)
                if status < 300:
                    return status, lease
            elif record.holder:
                raise self._refusal(resource, device_id, f"node {record.holder} holds it")
        raise self._refusal(resource, device_id, "another node claimed it at the same moment")

    def _refusal(self, resource: str, device_id: str, why: str) -> ClaimRefused:
        return ClaimRefused(refusal(self.namespace, resource, device_id, why))

    async def _release(self, resource: str, device_id: str) -> None:
        key = (resource, device_id)
        held = self.held.pop(key, None)
        if held is None:
            return
        name = lease_name(resource, device_id)
        body = {"preconditions": {"resourceVersion": held.resource_version}}
        try:
            status, _ = await self.leases.call("DELETE", self.leases.path(name), body)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            logger.warning(
                "cannot release device claim: {error}", error=str(exc), resource=resource, device=device_id
            )
            return
        if status < 300 or status == 404:
            self.book.forget(key)
        logger.info("device released", resource=resource, device=device_id, status=status)
        self._publish_blocked()

    # -- background work ---------------------------------------------------

    async def run(self) -> None:
        """Renew, release and watch claims until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._renew_loop)
            tg.start_soon(self._watch_loop)
            tg.start_soon(self._usage_loop)

    async def _watch_loop(self) -> None:
        while True:
            await self._rewatch.wait()
            self._rewatch = anyio.Event()
            keys = self._to_watch()
            if keys == self.watched:
                continue
            # _synced stays set after the first LIST: a device newly shared before the
            # new LIST answers is claimed by a create, which fails (409) if it exists.
            self.watched = keys
            if not keys:
                self.list_watch = None
                self.book.replace_all({}, self.clock())
                continue
            self.list_watch = self._list_watch(keys)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._follow, self.list_watch)
                await self._rewatch.wait()
                tg.cancel_scope.cancel()

    async def _follow(self, list_watch: ListWatch) -> None:
        async for event in list_watch.events():
            try:
                self._take(event)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                # One Lease of an unexpected shape must not end the daemon.
                logger.error(
                    "ignoring a malformed Lease event: {error}", error=f"{type(exc).__name__}: {exc}"
                )

    def _take(self, event: Listed | Changed) -> None:
        self._observing()  # first discount a blind spell this event ends
        now = self.clock()
        if isinstance(event, Listed):
            records = {}
            for lease in event.items:
                try:
                    key = lease_key(lease)
                    if key is not None:
                        records[key] = lease_record(lease)
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    logger.error("ignoring a malformed Lease: {error}", error=f"{type(exc).__name__}: {exc}")
            self.book.replace_all(records, now)
            self._synced.set()
        elif isinstance(event, Changed):
            key = lease_key(event.obj)
            if key is None:
                return
            if event.kind == "DELETED":
                self.book.forget(key)
            else:
                self.book.observe(key, lease_record(event.obj), now)
        self._publish_blocked()

    async def _usage_loop(self) -> None:
        while True:
            await self._busy.wait()
            try:
                for key, held in list(self.held.items()):
                    if held.lapsed(self.clock()):
                        self._lose(key, f"not renewed for the Lease duration of {self.lease_duration:g} s")
                if self._synced.is_set() and (self.shared or self.held):
                    await self._reconcile_usage()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                logger.warning("cannot reconcile device claims: {error}", error=str(exc))
            # Expiry is a matter of local time passing, not of an event: judge it again.
            self._publish_blocked()
            await anyio.sleep(self.poll)

    async def _reconcile_usage(self) -> None:
        in_use = await self.pod_resources.in_use()
        if in_use is None:
            return
        now = self.clock()
        for key in sorted(in_use & self.shared):
            if key in self.held or self._retry_after.get(key, 0.0) > now:
                continue
            if self.book.may_take(key, self.node_name, now, observing=self._observing()):
                try:
                    await self._claim_one(*key)
                except ClaimRefused as exc:
                    self._retry_after[key] = now + self.lease_duration / 3
                    logger.error("a container here uses a device held elsewhere: {error}", error=str(exc))
        now = self.clock()
        for key, held in list(self.held.items()):
            if key not in in_use and now - held.since > self.claim_grace:
                await self._release(*key)

    def _observing(self) -> bool:
        """The watch is in sync; the time it was not is taken off every observation's age."""
        observing = self.list_watch is not None and self.list_watch.in_sync
        if not observing:
            if self._blind_since is None and self._synced.is_set():
                self._blind_since = self.clock()
        elif self._blind_since is not None:
            self.book.discount(self.clock() - self._blind_since)
            self._blind_since = None
        return observing

    def _publish_blocked(self) -> None:
        blocked: dict[str, set[str]] = {}
        now = self.clock()
        observing = self._observing()
        for key in self.shared:
            if not self._own(key) and self.book.held_elsewhere(key, self.node_name, now, observing=observing):
                blocked.setdefault(key[0], set()).add(key[1])
        for resource in set(blocked) | set(self._blocked):
            if blocked.get(resource, set()) != self._blocked.get(resource, set()):
                self.on_blocked(resource, blocked.get(resource, set()))
        self._blocked = blocked
