"""Wires a configuration source to the reconciler and the plugin servers (SPEC §3-§5).

One task group owns every task: the source loop, the reconciler, the plugin
directory watch and one task per resource server. Cancellation is the only way
tasks end; SIGTERM/SIGINT cancel the group, and each server ends its streams and
removes its socket on the way out.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio
from loguru import logger

from spookd import reconcile
from spookd.claims import Claims
from spookd.config.model import Device
from spookd.config.versions import Accepted, Deleted, EventSink, Rejected, SourceEvent
from spookd.deviceplugin.probes import HealthProber
from spookd.deviceplugin.server import ResourceServer
from spookd.deviceplugin.watch import watch_plugin_dir
from spookd.naming import assign_socket_names
from spookd.observe import metrics

DesiredState = dict[str, dict[str, Device]]


@dataclass(frozen=True)
class Submission:
    """A desired state and the configuration event it came from."""

    desired: DesiredState
    event: Accepted | Deleted
    #: (resource, instance ID) of this node's devices that need cross-host claims
    shared: frozenset[tuple[str, str]] = frozenset()


class Latest:
    """A one-slot mailbox: ``put`` replaces what is waiting, so only the newest wins."""

    def __init__(self) -> None:
        self._value: Submission | None = None
        self._ready = asyncio.Event()

    @property
    def pending(self) -> bool:
        """A desired state waits to be applied."""
        return self._value is not None

    def put(self, value: Submission) -> None:
        self._value = value
        self._ready.set()

    async def get(self) -> Submission:
        await self._ready.wait()
        self._ready.clear()
        value, self._value = self._value, None
        assert value is not None
        return value


@dataclass
class _Running:
    server: ResourceServer
    scope: anyio.CancelScope
    done: anyio.Event = field(default_factory=anyio.Event)


class ResourceLifecycle(Protocol):
    """Told when this node starts and stops serving a resource (stale-resource cleanup)."""

    def serving(self, resource: str) -> None:
        """Spookd serves ``resource`` now."""

    def withdrawn(self, resource: str) -> None:
        """Spookd stopped serving ``resource``."""


class SharedClaims(Claims, Protocol):
    """Cross-host claims as the reconciler drives them (spookd.kube.leases.LeaseClaims)."""

    def set_shared(self, shared: frozenset[tuple[str, str]]) -> None:
        """This node's devices that need claims now."""

    def blocked(self, resource: str) -> set[str]:
        """Devices of ``resource`` another node holds."""

    async def run(self) -> None:
        """Renew, release and watch claims until cancelled."""


class Reconciler:
    """Owns the running servers; applies each desired state through the pure diff."""

    def __init__(
        self,
        plugin_dir: Path,
        task_group: anyio.abc.TaskGroup,
        events: EventSink | None = None,
        lifecycle: ResourceLifecycle | None = None,
    ) -> None:
        self.plugin_dir = plugin_dir
        self._tg = task_group
        self._events = events
        self._lifecycle = lifecycle
        self._running: dict[str, _Running] = {}
        self.mailbox = Latest()
        self.applied = 0
        self.applying = False
        self.claims: SharedClaims | None = None
        self._generations: dict[str, int] = {}
        self.prober = HealthProber(task_group, self._health_changed)

    def _share(self, shared: frozenset[tuple[str, str]]) -> None:
        if self.claims is not None:
            self.claims.set_shared(shared)
            return
        # Without the Kubernetes API no claim can be made: shared devices are offered
        # nowhere rather than possibly twice.
        if shared:
            logger.error(
                "exclusive: true needs the Kubernetes API to claim shared devices; run with --configmap "
                "or --lease-namespace. Shared devices are reported Unhealthy until then."
            )
        for resource, running in self._running.items():
            running.server.set_blocked({i for r, i in shared if r == resource})

    def blocked_changed(self, resource_name: str, device_ids: set[str]) -> None:
        """Claims say which devices of a resource another node holds now."""
        running = self._running.get(resource_name)
        if running is not None:
            running.server.set_blocked(device_ids)

    def _registration_failing(self, resource_name: str, error: str, seconds: float) -> None:
        if self._events is not None:
            self._tg.start_soon(self._events.registration_failing, resource_name, error, seconds)

    def _health_changed(self, resource_name: str, device_id: str, health: str) -> None:
        running = self._running.get(resource_name)
        if running is not None:
            running.server.set_health(device_id, health)

    def servers(self) -> list[ResourceServer]:
        """The servers running now."""
        return [r.server for r in self._running.values()]

    def running_state(self) -> DesiredState:
        """What runs now, in the shape of a desired state."""
        return {name: r.server.devices for name, r in self._running.items()}

    async def run(self) -> None:
        """Apply the newest desired state, forever; states that arrive meanwhile coalesce."""
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
                self._tg.start_soon(self._events.deleted, submission.event)
            elif actions:
                self._tg.start_soon(self._events.applied, submission.event, reconcile.summary(actions))

    async def apply(self, desired: DesiredState) -> list[reconcile.Action]:
        """Make the running servers match ``desired``; return what was done."""
        actions = reconcile.diff(desired, self.running_state())
        if not actions:
            self.prober.sync(desired)
            return actions
        sockets = assign_socket_names(
            desired,
            str(self.plugin_dir),
            existing={name: r.server.socket_name for name, r in self._running.items()},
        )
        for action in actions:
            if isinstance(action, reconcile.StopResource):
                await self._stop(action.resource_name)
            elif isinstance(action, reconcile.StartResource):
                server = ResourceServer(
                    action.resource_name,
                    action.devices,
                    self.plugin_dir,
                    sockets[action.resource_name],
                    generation=self._generations.get(action.resource_name, 0) + 1,
                )
                server.on_registration_failing = self._registration_failing
                if self.claims is not None:
                    server.claims = self.claims
                    server.blocked = self.claims.blocked(action.resource_name)
                running = _Running(server, anyio.CancelScope())
                self._running[action.resource_name] = running
                if self._lifecycle is not None:
                    self._lifecycle.serving(action.resource_name)
                await self._tg.start(self._serve, running)
            else:
                self._running[action.resource_name].server.update(action.devices)
        # after the servers exist, so that no probe result finds no one to tell
        self.prober.sync(desired)
        self.applied += 1
        changes = reconcile.summary(actions)
        logger.info(
            "config applied",
            added=",".join(changes["added"]),
            changed=",".join(changes["changed"]),
            removed=",".join(changes["removed"]),
        )
        return actions

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
        # A resource added back later starts on a name this process never used: the
        # kubelet may not have torn down its stream on the old one yet and would
        # refuse it ("already connected") for good.
        self._generations[resource_name] = running.server.generation
        await running.server.withdraw()
        running.scope.cancel()
        await running.done.wait()
        metrics.DEVICES.remove(resource_name, "Healthy")
        metrics.DEVICES.remove(resource_name, "Unhealthy")
        if self._lifecycle is not None:
            self._lifecycle.withdrawn(resource_name)
        logger.info("server stopped", resource=resource_name, socket=str(running.server.socket_path))


@dataclass
class AppState:
    """What the health endpoint reports."""

    node_name: str
    config_loaded: bool = False
    reconciler: Reconciler | None = None

    def ready(self) -> tuple[bool, str]:
        """Ready when a valid config is loaded and every resource is registered and streaming."""
        if not self.config_loaded or self.reconciler is None:
            return False, "no valid configuration loaded yet"
        if self.reconciler.mailbox.pending or self.reconciler.applying:
            return False, "applying a new configuration"
        waiting = [s.resource_name for s in self.reconciler.servers() if not (s.registered and s.streaming)]
        if waiting:
            return False, "not registered with the kubelet yet: " + ", ".join(sorted(waiting))
        return True, "ok"


async def run(
    source: AsyncIterator[SourceEvent],
    node_name: str,
    plugin_dir: Path,
    *,
    state: AppState | None = None,
    extra_tasks: list[Callable[[AppState], Coroutine[Any, Any, None]]] | None = None,
    events: EventSink | None = None,
    lifecycle: Callable[[anyio.abc.TaskGroup], ResourceLifecycle] | None = None,
    claims: Callable[[Callable[[str, set[str]], None]], SharedClaims] | None = None,
) -> None:
    """Serve the node's devices from ``source`` until SIGTERM/SIGINT."""
    state = state or AppState(node_name=node_name)
    logger.info("starting", node=node_name, plugin_dir=str(plugin_dir))
    async with anyio.create_task_group() as tg:
        reconciler = Reconciler(plugin_dir, tg, events, lifecycle(tg) if lifecycle else None)
        if claims is not None:
            reconciler.claims = claims(reconciler.blocked_changed)
            tg.start_soon(reconciler.claims.run)
        state.reconciler = reconciler
        tg.start_soon(_stop_on_signal, tg.cancel_scope)
        tg.start_soon(watch_plugin_dir, plugin_dir, reconciler.servers)
        tg.start_soon(reconciler.run)
        for task in extra_tasks or []:
            tg.start_soon(task, state)
        await _consume(source, node_name=node_name, state=state, reconciler=reconciler, events=events, tg=tg)
        # A source that ends (tests, one-shot runs) leaves the servers serving.
        await anyio.sleep_forever()


async def _consume(
    source: AsyncIterator[SourceEvent],
    *,
    node_name: str,
    state: AppState,
    reconciler: Reconciler,
    events: EventSink | None,
    tg: anyio.abc.TaskGroup,
) -> None:
    async for event in source:
        if isinstance(event, Accepted):
            desired = event.config.for_node(node_name)
            metrics.CONFIG_RELOADS.labels("accepted").inc()
            metrics.LAST_GOOD_CONFIG.set(time.time())
            state.config_loaded = True
            logger.info(
                "config accepted",
                source=event.source,
                resources=len(desired),
                devices=sum(len(d) for d in desired.values()),
            )
            shared = frozenset(k for k in event.config.shared_devices() if k[1] in desired.get(k[0], {}))
            reconciler.mailbox.put(Submission(desired, event, shared))
        elif isinstance(event, Rejected):
            metrics.CONFIG_RELOADS.labels("rejected").inc()
            logger.error(
                "config rejected, keeping the last good configuration: {count} error(s)\n{errors}",
                count=len(event.errors),
                errors="\n".join(str(e) for e in event.errors),
                source=event.source,
            )
            if events is not None:
                tg.start_soon(events.rejected, event)
        elif isinstance(event, Deleted):
            metrics.CONFIG_RELOADS.labels("deleted").inc()
            logger.warning("configuration deleted: withdrawing every resource", source=event.source)
            state.config_loaded = False
            reconciler.mailbox.put(Submission({}, event))


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            logger.info("shutting down", signal=signal.Signals(signum).name)
            scope.cancel()
            return
