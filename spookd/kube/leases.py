"""Cross-host exclusive devices: one holder cluster-wide, through Leases (SPEC §10).

With ``exclusive: true`` in the configuration, a device listed for several hosts is
advertised on each of them but held by one node at a time. The node whose kubelet
allocates it claims a ``coordination.k8s.io/v1`` Lease named after the device,
with optimistic concurrency (create, or replace at the read resourceVersion), renews
it while any container on the node uses the device (the kubelet's PodResources
API), and deletes it once none has for a grace period. A holder that dies stops
renewing and its Lease expires. Every other node reports the device Unhealthy while
a live Lease names another holder, so the kubelet does not offer it there.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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

LEASE_DURATION = float(os.environ.get("SPOOKD_LEASE_DURATION", "15"))
#: A fresh claim is not released before this, even if no container shows it yet.
CLAIM_GRACE = float(os.environ.get("SPOOKD_CLAIM_GRACE", "5"))
#: How often the kubelet's PodResources and the Leases are read.
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


def _parse_time(value: str | None) -> float:
    if not value:
        return 0.0
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclass
class LeaseView:
    """What a Lease says: who holds the device, and until when."""

    holder: str
    expires: float
    resource_version: str

    @classmethod
    def from_json(cls, lease: dict[str, Any]) -> LeaseView:
        spec = lease.get("spec") or {}
        renewed = _parse_time(spec.get("renewTime") or spec.get("acquireTime"))
        duration = float(spec.get("leaseDurationSeconds") or 0)
        return cls(
            holder=spec.get("holderIdentity") or "",
            expires=renewed + duration,
            resource_version=lease["metadata"]["resourceVersion"],
        )

    def live(self) -> bool:
        """A holder is named and the Lease has not expired."""
        return bool(self.holder) and self.expires > time.time()


@dataclass
class Held:
    """A claim this node holds."""

    resource_version: str
    since: float


class LeaseClaims:
    """This node's claims on shared devices, and what other nodes hold."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        node_name: str,
        pod_resources_socket: str,
        on_blocked: BlockedCallback,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.node_name = node_name
        self.pod_resources_socket = pod_resources_socket
        self.on_blocked = on_blocked
        self.shared: frozenset[Key] = frozenset()
        self.held: dict[Key, Held] = {}
        self.leases: dict[Key, LeaseView] = {}
        self._blocked: dict[str, set[str]] = {}
        self._lock = anyio.Lock()
        self._pod_resources_warned = False

    # -- what the reconciler and the servers ask --------------------------

    def set_shared(self, shared: Iterable[Key]) -> None:
        """The devices of this node that need claims under the current configuration."""
        self.shared = frozenset(shared)
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
        self, method: str, path: str, body: Any = None, **query: str
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
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            payload = json.loads(exc.body) if exc.body else {}
            return exc.status, payload
        data = await response.read()
        return response.status, json.loads(data) if data else {}

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
                "leaseDurationSeconds": max(1, round(LEASE_DURATION)),
                "acquireTime": now,
                "renewTime": now,
            },
        }

    async def _claim_one(self, resource: str, device_id: str) -> bool:
        """Take the device's Lease; True if this call took it (False: already ours)."""
        key = (resource, device_id)
        if key in self.held:
            return False
        name = lease_name(resource, device_id)
        async with self._lock:
            status, lease = await self._call("GET", self._path(name))
            if status == 404:
                status, lease = await self._call("POST", self._path(), self._lease_body(resource, device_id))
                if status == 409:
                    raise ClaimRefused(
                        self._refusal(resource, device_id, "another node claimed it at the same moment")
                    )
                self._check(status, lease, "create")
            else:
                self._check(status, lease, "read")
                view = LeaseView.from_json(lease)
                if view.holder != self.node_name and view.live():
                    raise ClaimRefused(self._refusal(resource, device_id, f"node {view.holder} holds it"))
                body = self._lease_body(resource, device_id, view.resource_version)
                status, lease = await self._call("PUT", self._path(name), body)
                if status == 409:
                    raise ClaimRefused(
                        self._refusal(resource, device_id, "another node claimed it at the same moment")
                    )
                self._check(status, lease, "take over")
            view = LeaseView.from_json(lease)
            self.held[key] = Held(view.resource_version, time.monotonic())
            self.leases[key] = view
        logger.info("device claimed", resource=resource, device=device_id, lease=f"{self.namespace}/{name}")
        self._publish_blocked()
        return True

    def _refusal(self, resource: str, device_id: str, why: str) -> str:
        return (
            f"{resource} device {device_id!r} is exclusive and {why} "
            f"(Lease {self.namespace}/{lease_name(resource, device_id)}); "
            "the pod cannot have it on this node now"
        )

    @staticmethod
    def _check(status: int, body: dict[str, Any], what: str) -> None:
        if status >= 300:
            raise ClaimRefused(
                f"cannot {what} the device's Lease: HTTP {status} {body.get('message', '')}".strip()
            )

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
        self.leases.pop(key, None)
        logger.info("device released", resource=resource, device=device_id, status=status)
        self._publish_blocked()

    async def _renew(self) -> None:
        for (resource, device_id), held in list(self.held.items()):
            name = lease_name(resource, device_id)
            body = self._lease_body(resource, device_id, held.resource_version)
            status, lease = await self._call("PUT", self._path(name), body)
            if status < 300:
                held.resource_version = lease["metadata"]["resourceVersion"]
                self.leases[(resource, device_id)] = LeaseView.from_json(lease)
                continue
            self.held.pop((resource, device_id), None)
            logger.error(
                "lost the claim on {resource} device {device} (HTTP {status}); another node holds it now, "
                "and a container here may still use it",
                resource=resource,
                device=device_id,
                status=status,
            )

    # -- background work ---------------------------------------------------

    async def run(self) -> None:
        """Renew, release and watch claims until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._renew_loop)
            tg.start_soon(self._watch_loop)

    async def _renew_loop(self) -> None:
        while True:
            await anyio.sleep(LEASE_DURATION / 3)
            try:
                await self._renew()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                logger.warning("cannot renew device claims: {error}", error=str(exc))

    async def _watch_loop(self) -> None:
        while True:
            try:
                await self._refresh_leases()
                if self.shared or self.held:
                    await self._reconcile_usage()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                logger.warning("cannot read device claims: {error}", error=str(exc))
            await anyio.sleep(POLL)

    async def _refresh_leases(self) -> None:
        if not self.shared and not self.held:
            return
        status, listing = await self._call(
            "GET", self._path(), labelSelector="app.kubernetes.io/managed-by=spookd"
        )
        if status >= 300:
            logger.warning("cannot list device Leases: HTTP {status}", status=status)
            return
        leases: dict[Key, LeaseView] = {}
        for lease in listing.get("items", []):
            notes = lease["metadata"].get("annotations") or {}
            key = (notes.get("spookd.skao.int/resource", ""), notes.get("spookd.skao.int/device", ""))
            leases[key] = LeaseView.from_json(lease)
        self.leases = leases
        self._publish_blocked()

    async def _reconcile_usage(self) -> None:
        in_use = await self._in_use()
        if in_use is None:
            return
        for key in sorted(in_use & self.shared):
            if key not in self.held:
                view = self.leases.get(key)
                if view is None or view.holder == self.node_name or not view.live():
                    try:
                        await self._claim_one(*key)
                    except ClaimRefused as exc:
                        logger.error("a container here uses a device held elsewhere: {error}", error=str(exc))
        now = time.monotonic()
        for key, held in list(self.held.items()):
            if key not in in_use and now - held.since > CLAIM_GRACE:
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
        for key in self.shared:
            view = self.leases.get(key)
            if key not in self.held and view is not None and view.holder != self.node_name and view.live():
                blocked.setdefault(key[0], set()).add(key[1])
        for resource in set(blocked) | set(self._blocked):
            if blocked.get(resource, set()) != self._blocked.get(resource, set()):
                self.on_blocked(resource, blocked.get(resource, set()))
        self._blocked = blocked
