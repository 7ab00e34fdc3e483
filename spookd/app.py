"""Wires a configuration source to the resource servers (SPEC §3-§5).

One root task group holds one task per component, and each component owns the
task group of its own tasks: the servers (one task per resource, the health
probes), the plugin-directory watch, and where the API is in use the Lease
claims, the Event reporter and the stale-resource cleaner. Cancellation is the
only way tasks end; SIGTERM/SIGINT cancel the root group, and each server ends
its streams and removes its socket on the way out.
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import anyio
from loguru import logger

from spookd.claims import BlockedDevices, SharedClaims
from spookd.config.versions import Accepted, Deleted, EventSink, Rejected, SourceEvent
from spookd.deviceplugin.servers import ResourceLifecycle, Servers, Submission
from spookd.deviceplugin.watch import watch_plugin_dir
from spookd.observe import metrics

if TYPE_CHECKING:
    from spookd.dra.plugin import DraPlugin


class Component(Protocol):
    """Something with tasks of its own, running until cancelled."""

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start, say so through ``task_status``, and run until cancelled."""


class ReportingSink(EventSink, Component, Protocol):
    """An EventSink whose reports a task of its own sends."""


class Cleaner(ResourceLifecycle, Component, Protocol):
    """A ResourceLifecycle with tasks of its own."""


@dataclass
class AppState:
    """What the health endpoint reports."""

    node_name: str
    config_loaded: bool = False
    servers: Servers | None = None

    def ready(self) -> tuple[bool, str]:
        """Ready when a valid config is loaded and every resource is registered and streaming."""
        if not self.config_loaded or self.servers is None:
            return False, "no valid configuration loaded yet"
        if self.servers.mailbox.pending or self.servers.applying:
            return False, "applying a new configuration"
        waiting = [s.resource_name for s in self.servers.servers() if not (s.registered and s.streaming)]
        if waiting:
            return False, "not registered with the kubelet yet: " + ", ".join(sorted(waiting))
        return True, "ok"


async def run(
    source: AsyncIterator[SourceEvent],
    node_name: str,
    plugin_dir: Path,
    *,
    state: AppState | None = None,
    events: ReportingSink | None = None,
    cleaner: Cleaner | None = None,
    claims: SharedClaims | None = None,
    blocked: BlockedDevices | None = None,
    http_addr: tuple[str, int] | None = None,
    report_failing_after: float = 60.0,
) -> None:
    """Serve the node's devices from ``source`` until SIGTERM/SIGINT."""
    state = state or AppState(node_name=node_name)
    if http_addr is not None:
        metrics.enable()
    logger.info("starting", node=node_name, plugin_dir=str(plugin_dir))
    servers = Servers(
        plugin_dir,
        events=events,
        lifecycle=cleaner,
        claims=claims,
        blocked=blocked,
        report_failing_after=report_failing_after,
    )
    state.servers = servers
    async with anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_signal, tg.cancel_scope)
        for component in (events, cleaner):
            if component is not None:
                await tg.start(component.run)
        if claims is not None:
            tg.start_soon(claims.run)
        await tg.start(servers.run)
        tg.start_soon(watch_plugin_dir, plugin_dir, servers.servers)
        if http_addr is not None:
            from spookd.observe.http import serve_http

            tg.start_soon(serve_http, *http_addr, state.ready)
        await _consume(source, node_name=node_name, state=state, servers=servers, events=events)
        # A source that ends (tests, one-shot runs) leaves the servers serving.
        await anyio.sleep_forever()


async def _consume(
    source: AsyncIterator[SourceEvent],
    *,
    node_name: str,
    state: AppState,
    servers: Servers,
    events: EventSink | None,
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
            servers.mailbox.put(Submission(desired, event, shared))
        elif isinstance(event, Rejected):
            metrics.CONFIG_RELOADS.labels("rejected").inc()
            logger.error(
                "config rejected, keeping the last good configuration: {count} error(s)\n{errors}",
                count=len(event.errors),
                errors="\n".join(str(e) for e in event.errors),
                source=event.source,
            )
            if events is not None:
                events.rejected(event)
        elif isinstance(event, Deleted):
            metrics.CONFIG_RELOADS.labels("deleted").inc()
            logger.warning("configuration deleted: withdrawing every resource", source=event.source)
            state.config_loaded = False
            servers.mailbox.put(Submission({}, event))


async def run_dra(
    source: AsyncIterator[SourceEvent],
    node_name: str,
    plugin: DraPlugin,
    *,
    events: ReportingSink | None = None,
    http_addr: tuple[str, int] | None = None,
) -> None:
    """DRA mode on the node (SPEC §11): serve the kubelet's DRA calls from ``source`` until SIGTERM/SIGINT."""
    if http_addr is not None:
        metrics.enable()
    logger.info("starting in DRA mode", node=node_name, driver=plugin.driver, endpoint=str(plugin.endpoint))
    loaded = False

    def ready() -> tuple[bool, str]:
        if not loaded:
            return False, "no valid configuration loaded yet"
        if not plugin.registration.registered:
            return False, "not registered with the kubelet yet"
        return True, "ok"

    async with anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_signal, tg.cancel_scope)
        if events is not None:
            await tg.start(events.run)
        await tg.start(plugin.run)
        if http_addr is not None:
            from spookd.observe.http import serve_http

            tg.start_soon(serve_http, *http_addr, ready)
        async for event in source:
            if isinstance(event, Accepted):
                # Claims prepared before keep what they got; new claims see this version.
                plugin.preparer.node_devices = event.config.for_node(node_name)
                loaded = True
                metrics.CONFIG_RELOADS.labels("accepted").inc()
                logger.info("config accepted", source=event.source)
            elif isinstance(event, Rejected):
                metrics.CONFIG_RELOADS.labels("rejected").inc()
                logger.error(
                    "config rejected, keeping the last good configuration: {count} error(s)\n{errors}",
                    count=len(event.errors),
                    errors="\n".join(str(e) for e in event.errors),
                    source=event.source,
                )
                if events is not None:
                    events.rejected(event)
            elif isinstance(event, Deleted):
                metrics.CONFIG_RELOADS.labels("deleted").inc()
                logger.warning("configuration deleted: new claims find no device", source=event.source)
                plugin.preparer.node_devices = {}
        await anyio.sleep_forever()


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            logger.info("shutting down", signal=signal.Signals(signum).name)
            scope.cancel()
            return
