"""The running resource servers, changed only through the pure diff (SPEC §4).

:class:`Servers` owns one task group: a task per resource server, the health
probes, and the task that follows which devices other nodes hold. It applies the
newest submitted desired state; states that arrive meanwhile coalesce.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import anyio
from loguru import logger

from spookd import reconcile
from spookd.claims import BlockedDevices, SharedClaims
from spookd.config.model import NodeDevices
from spookd.config.versions import Accepted, Deleted, EventSink
from spookd.deviceplugin.probes import HealthProber
from spookd.deviceplugin.server import ResourceServer
from spookd.mailbox import Latest
from spookd.naming import assign_socket_names
from spookd.observe import metrics


@dataclass(frozen=True)
class Submission:
    """A desired state and the configuration event it came from."""

    desired: NodeDevices
    event: Accepted | Deleted
    #: (resource, instance ID) of this node's devices that need cross-host claims
    shared: frozenset[tuple[str, str]] = frozenset()


class ResourceLifecycle(Protocol):
    """Told when this node starts and stops serving a resource (stale-resource cleanup)."""

    def serving(self, resource: str) -> None:
        """Spookd serves ``resource`` now."""

    def withdrawn(self, resource: str) -> None:
        """Spookd stopped serving ``resource``."""


@dataclass
class _Running:
    server: ResourceServer
    scope: anyio.CancelScope
    done: anyio.Event = field(default_factory=anyio.Event)


class Servers:
    """Owns the running servers; applies each desired state through the pure diff."""

    def __init__(
        self,
        plugin_dir: Path,
        *,
        events: EventSink | None = None,
        lifecycle: ResourceLifecycle | None = None,
        claims: SharedClaims | None = None,
        blocked: BlockedDevices | None = None,
        report_failing_after: float = 60.0,
    ) -> None:
        self.plugin_dir = plugin_dir
        self.mailbox: Latest[Submission] = Latest()
        self.applied = 0
        self.applying = False
        self._events = events
        self._lifecycle = lifecycle
        self._claims = claims
        self._blocked = blocked or BlockedDevices()
        self._report_failing_after = report_failing_after
        self._running: dict[str, _Running] = {}
        self._generations: dict[str, int] = {}
        self._prober = HealthProber(self._health_changed)
        self._tg: anyio.abc.TaskGroup | None = None

    def servers(self) -> list[ResourceServer]:
        """The servers running now."""
        return [r.server for r in self._running.values()]

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Apply the newest desired state, forever."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await tg.start(self._prober.run)
            tg.start_soon(self._follow_blocked)
            task_status.started()
            while True:
                submission = await self.mailbox.get()
                self.applying = True
                try:
                    actions = await self.apply(submission.desired)
                    self._share(submission.shared)
                finally:
                    self.applying = False
                if self._events is None:
                    continue
                if isinstance(submission.event, Deleted):
                    self._events.deleted(submission.event)
                elif actions:
                    self._events.applied(submission.event, reconcile.summary(actions))

    async def apply(self, desired: NodeDevices) -> list[reconcile.Action]:
        """Make the running servers match ``desired``; return what was done."""
        actions = reconcile.diff(desired, {name: r.server.devices for name, r in self._running.items()})
        if not actions:
            self._prober.sync(desired)
            return actions
        sockets = assign_socket_names(
            desired,
            str(self.plugin_dir),
            existing={name: r.server.registration.base_socket_name for name, r in self._running.items()},
        )
        for action in actions:
            if isinstance(action, reconcile.StopResource):
                await self._stop(action.resource_name)
            elif isinstance(action, reconcile.StartResource):
                await self._start(action, sockets[action.resource_name])
            else:
                self._running[action.resource_name].server.update(action.devices)
        # after the servers exist, so that no probe result finds no one to tell
        self._prober.sync(desired)
        self.applied += 1
        changes = reconcile.summary(actions)
        logger.info(
            "config applied",
            added=",".join(changes["added"]),
            changed=",".join(changes["changed"]),
            removed=",".join(changes["removed"]),
        )
        return actions

    def _share(self, shared: frozenset[tuple[str, str]]) -> None:
        if self._claims is not None:
            self._claims.set_shared(shared)
            return
        # Without the Kubernetes API no claim can be made: shared devices are offered
        # nowhere rather than possibly twice.
        if shared:
            logger.error(
                "exclusive: true needs the Kubernetes API to claim shared devices; run with --configmap "
                "or --lease-namespace. Shared devices are reported Unhealthy until then."
            )
        for resource in self._running:
            self._blocked.update(resource, {i for r, i in shared if r == resource})

    async def _follow_blocked(self) -> None:
        while True:
            blocked = await self._blocked.changes.get()
            for name, running in self._running.items():
                running.server.set_blocked(set(blocked.get(name, ())))

    def _registration_failing(self, resource_name: str, error: str, seconds: float) -> None:
        if self._events is not None:
            self._events.registration_failing(resource_name, error, seconds)

    def _health_changed(self, resource_name: str, device_id: str, health: str) -> None:
        running = self._running.get(resource_name)
        if running is not None:
            running.server.set_health(device_id, health)

    async def _start(self, action: reconcile.StartResource, socket_name: str) -> None:
        assert self._tg is not None, "Servers.run starts the servers"
        server = ResourceServer(
            action.resource_name,
            action.devices,
            self.plugin_dir,
            socket_name,
            # A resource added back starts on a name this process never used: the
            # kubelet may not have torn down its stream on the old one yet and would
            # refuse it ("already connected") for good.
            generation=self._generations.get(action.resource_name, 0) + 1,
            claims=self._claims,
            blocked=self._blocked.get(action.resource_name),
            on_registration_failing=self._registration_failing,
            report_failing_after=self._report_failing_after,
        )
        running = _Running(server, anyio.CancelScope())
        self._running[action.resource_name] = running
        if self._lifecycle is not None:
            self._lifecycle.serving(action.resource_name)
        await self._tg.start(self._serve, running)

    async def _serve(
        self,
        running: _Running,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            with running.scope:
                await running.server.run(task_status=task_status)
        finally:
            running.done.set()

    async def _stop(self, resource_name: str) -> None:
        running = self._running.pop(resource_name)
        self._generations[resource_name] = running.server.registration.generation
        await running.server.withdraw()
        running.scope.cancel()
        await running.done.wait()
        metrics.DEVICES.remove(resource_name, "Healthy")
        metrics.DEVICES.remove(resource_name, "Unhealthy")
        if self._lifecycle is not None:
            self._lifecycle.withdrawn(resource_name)
        logger.info("server stopped", resource=resource_name, socket=str(running.server.socket_path))
