"""Kubernetes Events on the ConfigMap for what Spookd did with it (SPEC §3, §7).

Reports are queued (at most QUEUE_LIMIT; beyond that the oldest waiting one is
dropped and counted) and sent in order by one task, :meth:`KubeEvents.run`. A
failure to send is logged once and never ends the daemon.
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime

import aiohttp
import anyio
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from loguru import logger

from spookd.config.versions import Accepted, Deleted, ObjectRef, Rejected

#: Event messages are cut to this length (the API server's limit is 1 KiB for notes).
EVENT_MESSAGE_MAX = 1024
REQUEST_TIMEOUT = 30
#: Reports waiting to be sent; an API server that stays away costs no more memory than this.
QUEUE_LIMIT = 100

_Report = tuple[ObjectRef | None, str, str, str]


class KubeEvents:
    """Records Kubernetes Events on the ConfigMap for what Spookd did with it."""

    def __init__(self, api: client.ApiClient, node_name: str, configmap: ObjectRef) -> None:
        self.core = client.CoreV1Api(api)
        self.node_name = node_name
        self.configmap = configmap
        self._warned = False
        self._queue: deque[_Report] = deque()
        self._arrived = anyio.Event()
        self.dropped = 0

    @property
    def pending(self) -> int:
        """Reports waiting to be sent."""
        return len(self._queue)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Send the queued reports in order, until cancelled."""
        task_status.started()
        while True:
            while not self._queue:
                await self._arrived.wait()
                self._arrived = anyio.Event()
            ref, kind, reason, message = self._queue.popleft()
            try:
                await self._record(ref, kind, reason, message)
            except Exception as exc:  # reporting must never end the daemon
                logger.warning(
                    "cannot record a Kubernetes Event: {error}", error=f"{type(exc).__name__}: {exc}"
                )

    def _queue_report(self, ref: ObjectRef | None, kind: str, reason: str, message: str) -> None:
        if len(self._queue) >= QUEUE_LIMIT:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped in (1, 100) or self.dropped % 1000 == 0:
                logger.warning(
                    "too many Kubernetes Events waiting; dropped {count} so far", count=self.dropped
                )
        self._queue.append((ref, kind, reason, message))
        self._arrived.set()

    def registration_failing(self, resource: str, error: str, seconds: float) -> None:
        """Warning event on the ConfigMap: this node's kubelet has not taken a resource."""
        self._queue_report(
            self.configmap,
            "Warning",
            "RegistrationFailing",
            f"node {self.node_name}: {resource} is not registered with the kubelet after "
            f"{seconds:.0f}s: {error}; Spookd keeps retrying",
        )

    def applied(self, event: Accepted, changes: dict[str, list[str]]) -> None:
        """Normal event summarising the change on this node."""
        parts = [f"{kind} {', '.join(names)}" for kind, names in changes.items() if names]
        self._queue_report(
            event.ref, "Normal", "ConfigApplied", f"node {self.node_name}: " + "; ".join(parts)
        )

    def rejected(self, event: Rejected) -> None:
        """Warning event with the errors; the last good configuration keeps serving."""
        errors = "\n".join(str(e) for e in event.errors)
        self._queue_report(
            event.ref,
            "Warning",
            "ConfigRejected",
            f"node {self.node_name} keeps the last good configuration; "
            f"{len(event.errors)} error(s):\n{errors}",
        )

    def deleted(self, event: Deleted) -> None:
        """Warning event: every resource was withdrawn."""
        self._queue_report(
            event.ref,
            "Warning",
            "ConfigDeleted",
            f"node {self.node_name}: the configuration is gone; all devices withdrawn",
        )

    async def _record(self, ref: ObjectRef | None, kind: str, reason: str, message: str) -> None:
        if ref is None:
            return
        if ref.uid:
            self.configmap = ref
        if len(message) > EVENT_MESSAGE_MAX:
            message = message[: EVENT_MESSAGE_MAX - 3] + "..."
        now = datetime.now(UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{ref.name}.spookd-", namespace=ref.namespace),
            involved_object=client.V1ObjectReference(
                api_version="v1",
                kind="ConfigMap",
                namespace=ref.namespace,
                name=ref.name,
                uid=ref.uid or None,
                resource_version=ref.resource_version or None,
            ),
            type=kind,
            reason=reason,
            message=message,
            source=client.V1EventSource(component="spookd", host=self.node_name),
            reporting_component="spookd",
            reporting_instance=self.node_name,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            await self.core.create_namespaced_event(ref.namespace, body, _request_timeout=REQUEST_TIMEOUT)
        except (TimeoutError, ApiException, aiohttp.ClientError, OSError) as exc:
            if not self._warned:
                logger.warning(
                    "cannot record Kubernetes Events ({error}); the Role needs `create` on events",
                    error=getattr(exc, "reason", None) or str(exc),
                )
                self._warned = True
