"""Wires a configuration source to the resource servers (SPEC §3-§5).

One root task group holds one task per component, and each component owns the
task group of its own tasks: the servers (one task per resource, the health
probes), the plugin-directory watch, and where the API is in use the Lease
claims, the Event reporter and the stale-resource cleaner. Cancellation is the
only way tasks end; SIGTERM/SIGINT cancel the root group, and each server tells
its streams "no devices", ends them and removes its socket on the way out.
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import anyio
from loguru import logger

from spookd.claims import BlockedDevices, SharedClaims
from spookd.config.model import Device
from spookd.config.versions import Accepted, Deleted, EventSink, Rejected, SourceEvent
from spookd.deviceplugin.servers import ResourceLifecycle, Servers, Submission
from spookd.deviceplugin.watch import watch_plugin_dir
from spookd.naming import seat_of
from spookd.observe import metrics

if TYPE_CHECKING:
    from spookd.dra.plugin import DraPlugin


class Component(Protocol):
    """Something with tasks of its own, running until cancelled."""

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start, say so through ``task_status``, and run until cancelled."""


#: Starts following this node's labels (from the API): the labels once known, then at every change.
LabelFeed = Callable[[], AsyncIterator[Mapping[str, str]]]


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
    node_labels: LabelFeed | None = None,
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
        desire = _Desire(node_name, servers, node_labels, tg)
        await _consume(source, state=state, desire=desire, events=events)
        # A source that ends (tests, one-shot runs) leaves the servers serving.
        await anyio.sleep_forever()


class _Desire:
    """The desired state from the newest accepted configuration and this node's labels.

    The labels are followed only while some mapping has a ``nodeSelector``: without
    one Spookd never reads its Node. Until they are first known, selector mappings
    select nothing; a label change is submitted like a configuration edit.
    """

    def __init__(
        self, node_name: str, servers: Servers, feed: LabelFeed | None, tg: anyio.abc.TaskGroup
    ) -> None:
        self.node_name = node_name
        self.servers = servers
        self.feed = feed
        self.tg = tg
        self.event: Accepted | None = None
        self.labels: Mapping[str, str] | None = None
        self.following: anyio.CancelScope | None = None

    def accepted(self, event: Accepted) -> dict[str, dict[str, Device]]:
        """A new configuration: follow the labels if it needs them, and submit it."""
        self.event = event
        self._follow(event.config.uses_labels())
        return self._submit()

    def deleted(self, event: Deleted) -> None:
        """No configuration: nothing to serve, no labels to follow."""
        self.event = None
        self._follow(False)
        self.servers.mailbox.put(Submission({}, event))

    def _submit(self) -> dict[str, dict[str, Device]]:
        assert self.event is not None
        desired = self.event.config.for_node(self.node_name, self.labels)
        shared = frozenset(
            k for k in self.event.config.shared_devices() if seat_of(k[1])[0] in desired.get(k[0], {})
        )
        self.servers.mailbox.put(Submission(desired, self.event, shared))
        return desired

    def _follow(self, wanted: bool) -> None:
        if wanted and self.following is None:
            if self.feed is None:
                logger.error("nodeSelector needs the Kubernetes API; mappings with one select no node")
                return
            self.following = anyio.CancelScope()
            self.tg.start_soon(self._labels, self.following, self.feed)
        elif not wanted and self.following is not None:
            logger.info("no mapping selects nodes by label any more: not reading the Node")
            self.following.cancel()
            self.following = None
            self.labels = None

    async def _labels(self, scope: anyio.CancelScope, feed: LabelFeed) -> None:
        with scope:
            logger.info("a mapping selects nodes by label: following this node's labels")
            async for labels in feed():
                logger.info(
                    "node labels",
                    node=self.node_name,
                    labels=",".join(f"{k}={v}" for k, v in sorted(labels.items())),
                )
                self.labels = labels
                if self.event is not None:
                    self._submit()


async def _consume(
    source: AsyncIterator[SourceEvent],
    *,
    state: AppState,
    desire: _Desire,
    events: EventSink | None,
) -> None:
    async for event in source:
        if isinstance(event, Accepted):
            desired = desire.accepted(event)
            metrics.CONFIG_RELOADS.labels("accepted").inc()
            metrics.LAST_GOOD_CONFIG.set(time.time())
            state.config_loaded = True
            logger.info(
                "config accepted",
                source=event.source,
                resources=len(desired),
                devices=sum(len(d) for d in desired.values()),
            )
        elif isinstance(event, Rejected):
            _rejected(event, events)
        elif isinstance(event, Deleted):
            metrics.CONFIG_RELOADS.labels("deleted").inc()
            logger.warning("configuration deleted: withdrawing every resource", source=event.source)
            state.config_loaded = False
            desire.deleted(event)


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
                _rejected(event, events)
            elif isinstance(event, Deleted):
                metrics.CONFIG_RELOADS.labels("deleted").inc()
                logger.warning("configuration deleted: new claims find no device", source=event.source)
                plugin.preparer.node_devices = {}
        await anyio.sleep_forever()


def _rejected(event: Rejected, events: EventSink | None) -> None:
    """A rejected configuration: counted, logged with every error, reported as an Event."""
    metrics.CONFIG_RELOADS.labels("rejected").inc()
    logger.error(
        "config rejected, keeping the last good configuration: {count} error(s)\n{errors}",
        count=len(event.errors),
        errors="\n".join(str(e) for e in event.errors),
        source=event.source,
    )
    if events is not None:
        events.rejected(event)


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            logger.info("shutting down", signal=signal.Signals(signum).name)
            scope.cancel()
            return
