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

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import anyio
import grpclib.exceptions
from grpclib.client import Channel
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from loguru import logger

from spookd._proto import v1 as podresources
from spookd.claims import ClaimRefused
from spookd.kube.watch import Changed, Listed, ListWatch
from spookd.leasing import Holding, LeaseBook, LeaseRecord

LEASE_DURATION = float(os.environ.get("SPOOKD_LEASE_DURATION", "15"))
#: A fresh claim is not released before this, even if no container shows it yet.
CLAIM_GRACE = float(os.environ.get("SPOOKD_CLAIM_GRACE", "5"))
#: How often the kubelet's PodResources is read and expiries are judged (no API request).
POLL = float(os.environ.get("SPOOKD_CLAIM_POLL", "0.5"))
REQUEST_TIMEOUT = 10
LABELS = {"app.kubernetes.io/managed-by": "spookd"}
DEFAULT_POD_RESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"

Key = tuple[str, str]
BlockedCallback = Callable[[str, set[str]], None]


def lease_name(resource: str, device_id: str) -> str:
    """A valid, stable object name for a device's Lease."""
    digest = hashlib.sha256(f"{resource}/{device_id}".encode()).hexdigest()[:20]
    return f"spookd-{digest}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _time_text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value or "")


def lease_key(lease: Any) -> Key | None:
    """(resource, device) a Spookd Lease is about, from its annotations; None if not one of ours."""
    notes = getattr(lease.metadata, "annotations", None) or {}
    resource = notes.get("spookd.skao.int/resource")
    device = notes.get("spookd.skao.int/device")
    if not isinstance(resource, str) or not isinstance(device, str) or not resource or not device:
        return None
    return (resource, device)


def lease_record(lease: Any) -> LeaseRecord:
    """The expiry-relevant part of a kubernetes-asyncio V1Lease."""
    spec = lease.spec
    holder = (spec.holder_identity if spec is not None else None) or ""
    renewed = spec.renew_time or spec.acquire_time if spec is not None else None
    duration = float((spec.lease_duration_seconds if spec is not None else None) or 0)
    return LeaseRecord(
        holder=str(holder),
        renew_time=_time_text(renewed),
        duration=duration,
        resource_version=str(lease.metadata.resource_version or ""),
    )


def json_lease_record(lease: dict[str, Any]) -> LeaseRecord:
    """The expiry-relevant part of a Lease as JSON (an answer to a write)."""
    spec = lease.get("spec") or {}
    renewed = spec.get("renewTime") or spec.get("acquireTime")
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        renew_time=_time_text(datetime.fromisoformat(renewed.replace("Z", "+00:00")) if renewed else None),
        duration=float(spec.get("leaseDurationSeconds") or 0),
        resource_version=str(lease["metadata"]["resourceVersion"]),
    )


class LeaseClaims:
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.node_name = node_name
        self.pod_resources_socket = pod_resources_socket
        self.on_blocked = on_blocked
        self.lease_duration = lease_duration
        self.claim_grace = claim_grace
        self.poll = poll
        self.clock = clock
        self.shared: frozenset[Key] = frozenset()
        self.held: dict[Key, Holding] = {}
        #: Every Spookd Lease seen by the watch, and since when (this node's monotonic clock).
        self.book = LeaseBook()
        self.list_watch = ListWatch(
            client.CoordinationV1Api(api).list_namespaced_lease,
            namespace,
            what="Leases",
            forbidden=(
                f"not allowed to read the device Leases in namespace {namespace}; give Spookd's "
                "ServiceAccount get, list, watch, create, update and delete on leases (Helm rbac.exclusive)"
            ),
            label_selector="app.kubernetes.io/managed-by=spookd",
        )
        self._synced = anyio.Event()
        #: Set once the configuration has shared devices: only then are Leases read.
        self._wanted = anyio.Event()
        self._blocked: dict[str, set[str]] = {}
        self._lock = anyio.Lock()
        self._pod_resources_warned = False
        self._retry_after: dict[Key, float] = {}

    # -- what the reconciler and the servers ask --------------------------

    def set_shared(self, shared: Iterable[Key]) -> None:
        """The devices of this node that need claims under the current configuration."""
        self.shared = frozenset(shared)
        if self.shared:
            self._wanted.set()
        self._publish_blocked()

    def is_shared(self, resource: str, device_id: str) -> bool:
        """True when allocating this device needs a claim."""
        return (resource, device_id) in self.shared

    def blocked(self, resource: str) -> set[str]:
        """Devices of ``resource`` that another node holds now."""
        return set(self._blocked.get(resource, set()))

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

    def _path(self, name: str | None = None) -> str:
        base = f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"
        return f"{base}/{name}" if name else base

    async def _call(
        self, method: str, path: str, body: Any = None, request_timeout: float = REQUEST_TIMEOUT, **query: str
    ) -> tuple[int, dict[str, Any]]:
        try:
            response = await self.api.call_api(
                path,
                method,
                query_params=list(query.items()),
                header_params={"Content-Type": "application/json", "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=request_timeout,
            )
        except ApiException as exc:
            try:
                payload = json.loads(exc.body) if exc.body else {}
            except ValueError:
                payload = {}
            return exc.status, payload if isinstance(payload, dict) else {}
        data = await response.read()
        answer = json.loads(data) if data else {}
        return response.status, answer if isinstance(answer, dict) else {}

    def _lease_body(
        self, resource: str, device_id: str, resource_version: str | None = None
    ) -> dict[str, Any]:
        now = _now()
        metadata: dict[str, Any] = {
            "name": lease_name(resource, device_id),
            "namespace": self.namespace,
            "labels": LABELS,
            "annotations": {"spookd.skao.int/resource": resource, "spookd.skao.int/device": device_id},
        }
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": self.node_name,
                "leaseDurationSeconds": max(1, round(self.lease_duration)),
                "acquireTime": now,
                "renewTime": now,
            },
        }

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
            raise ClaimRefused(self._refusal(resource, device_id, "the device Leases cannot be read yet"))
        async with self._lock:
            seen = self.book.get(key)
            sent_at = self.clock()
            if seen is not None and not self.book.may_take(key, self.node_name, sent_at):
                raise ClaimRefused(self._refusal(resource, device_id, f"node {seen.record.holder} holds it"))
            status, lease = 404, dict[str, Any]()
            if seen is not None:
                # Replace exactly the record observed: a renewal or another claim since
                # then changes the resourceVersion and this write fails with 409.
                body = self._lease_body(resource, device_id, seen.record.resource_version)
                status, lease = await self._call("PUT", self._path(name), body)
                if status == 409:
                    raise ClaimRefused(
                        self._refusal(resource, device_id, "another node claimed it at the same moment")
                    )
                if status < 300:
                    self._check(status, lease, "take over")
            if status == 404:
                status, lease = await self._call("POST", self._path(), self._lease_body(resource, device_id))
                if status == 409:
                    raise ClaimRefused(
                        self._refusal(resource, device_id, "another node claimed it at the same moment")
                    )
                self._check(status, lease, "create")
            self._check(status, lease, "take over")
            record = self._record(lease, "claim")
            self.held[key] = Holding(record.resource_version, sent_at, self.lease_duration, self.clock())
            self.book.observe(key, record, self.clock())
        logger.info("device claimed", resource=resource, device=device_id, lease=f"{self.namespace}/{name}")
        self._publish_blocked()
        return True

    @staticmethod
    def _record(lease: dict[str, Any], what: str) -> LeaseRecord:
        try:
            return json_lease_record(lease)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ClaimRefused(f"the API server's answer to the Lease {what} is malformed ({exc})") from exc

    def _refusal(self, resource: str, device_id: str, why: str) -> str:
        return (
            f"{resource} device {device_id!r} is exclusive and {why} "
            f"(Lease {self.namespace}/{lease_name(resource, device_id)}); "
            "the pod cannot have it on this node now"
        )

    @staticmethod
    def _check(status: int, body: dict[str, Any], what: str) -> None:
        if status >= 300:
            message = str(body.get("message", ""))[:300]
            raise ClaimRefused(f"cannot {what} the device's Lease: HTTP {status} {message}".strip())

    async def _release(self, resource: str, device_id: str) -> None:
        key = (resource, device_id)
        held = self.held.pop(key, None)
        if held is None:
            return
        name = lease_name(resource, device_id)
        body = {"preconditions": {"resourceVersion": held.resource_version}}
        try:
            status, _ = await self._call("DELETE", self._path(name), body)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            logger.warning(
                "cannot release device claim: {error}", error=str(exc), resource=resource, device=device_id
            )
            return
        if status < 300 or status == 404:
            self.book.forget(key)
        logger.info("device released", resource=resource, device=device_id, status=status)
        self._publish_blocked()

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
            body = self._lease_body(resource, device_id, held.resource_version)
            sent_at = self.clock()
            try:
                # A renewal that takes longer than a third of the duration is retried
                # rather than waited for: the claim must not lapse behind one slow call.
                status, lease = await self._call(
                    "PUT", self._path(name), body, request_timeout=max(1.0, self.lease_duration / 3)
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

    # -- background work ---------------------------------------------------

    async def run(self) -> None:
        """Renew, release and watch claims until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._renew_loop)
            tg.start_soon(self._watch_loop)
            tg.start_soon(self._usage_loop)

    async def _renew_loop(self) -> None:
        interval = self.lease_duration / 3
        delay = interval
        while True:
            await anyio.sleep(delay)
            # After a failed renewal, retry soon: the Lease must be renewed before
            # other nodes have seen it unchanged for its whole duration.
            delay = interval if await self._renew() else min(interval, max(0.2, self.lease_duration / 15))

    async def _watch_loop(self) -> None:
        await self._wanted.wait()
        async for event in self.list_watch.events():
            now = self.clock()
            if isinstance(event, Listed):
                records = {}
                for lease in event.items:
                    key = lease_key(lease)
                    if key is not None:
                        records[key] = lease_record(lease)
                self.book.replace_all(records, now)
                self._synced.set()
            elif isinstance(event, Changed):
                key = lease_key(event.obj)
                if key is None:
                    continue
                if event.kind == "DELETED":
                    self.book.forget(key)
                else:
                    self.book.observe(key, lease_record(event.obj), now)
            self._publish_blocked()

    async def _usage_loop(self) -> None:
        while True:
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
        in_use = await self._in_use()
        if in_use is None:
            return
        now = self.clock()
        for key in sorted(in_use & self.shared):
            if key in self.held or self._retry_after.get(key, 0.0) > now:
                continue
            if self.book.may_take(key, self.node_name, now):
                try:
                    await self._claim_one(*key)
                except ClaimRefused as exc:
                    self._retry_after[key] = now + self.lease_duration / 3
                    logger.error("a container here uses a device held elsewhere: {error}", error=str(exc))
        now = self.clock()
        for key, held in list(self.held.items()):
            if key not in in_use and now - held.since > self.claim_grace:
                await self._release(*key)

    async def _in_use(self) -> set[Key] | None:
        channel = Channel(path=self.pod_resources_socket)
        try:
            stub = podresources.PodResourcesListerStub(channel)
            response = await stub.list(podresources.ListPodResourcesRequest(), timeout=REQUEST_TIMEOUT)
        except (
            TimeoutError,
            OSError,
            grpclib.exceptions.GRPCError,
            grpclib.exceptions.StreamTerminatedError,
        ) as exc:
            if not self._pod_resources_warned:
                logger.warning(
                    "cannot read the kubelet's PodResources at {socket} ({error}); "
                    "claims are kept, not released",
                    socket=self.pod_resources_socket,
                    error=str(exc) or type(exc).__name__,
                )
                self._pod_resources_warned = True
            return None
        finally:
            channel.close()
        self._pod_resources_warned = False
        return {
            (devices.resource_name, device_id)
            for pod in response.pod_resources
            for container in pod.containers
            for devices in container.devices
            for device_id in devices.device_ids
        }

    def _publish_blocked(self) -> None:
        blocked: dict[str, set[str]] = {}
        now = self.clock()
        for key in self.shared:
            if not self._own(key) and self.book.held_elsewhere(key, self.node_name, now):
                blocked.setdefault(key[0], set()).add(key[1])
        for resource in set(blocked) | set(self._blocked):
            if blocked.get(resource, set()) != self._blocked.get(resource, set()):
                self.on_blocked(resource, blocked.get(resource, set()))
        self._blocked = blocked
