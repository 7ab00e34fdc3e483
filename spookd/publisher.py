"""DRA mode's publisher: keeps this driver's ResourceSlices and DeviceClasses equal to the configuration.

``spookd publish`` runs one of these per cluster (a one-replica Deployment; a Lease
elects the one that writes). While leading it follows the source (file or ConfigMap),
probes the devices' health checks, and after every change — and every ``resync``
seconds, to repair what someone else changed — lists the driver's slices and carries
out spookd.draplan's writes: removals first, then the rest. A configuration that DRA
mode cannot publish is rejected as a whole with every problem named, and the last
good one stays published. A failed write is retried with backoff from a new listing.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from loguru import logger

from spookd.backoff import Backoff
from spookd.config import Config, Device
from spookd.config.dralimits import dra_errors
from spookd.config.model import HEALTHY
from spookd.config.versions import Accepted, Deleted, Rejected, SourceEvent
from spookd.deviceplugin.probes import HealthProber
from spookd.draplan import WritePool, plan, pool_states, published_taints
from spookd.draslices import RESOURCE_ANNOTATION, DeviceKey, desired_pools, device_classes
from spookd.kube.draapi import CLASSES, SLICES, DraApi, DraApiError
from spookd.mailbox import Latest


class Publisher:
    """Follows one source and publishes it; one instance per leadership term."""

    def __init__(self, api: DraApi, *, resync: float = 60.0) -> None:
        self.api = api
        self.resync = resync
        self.config: Config | None = None
        #: Probe results by device; a device with a check and no result yet is absent.
        self.health: dict[DeviceKey, bool] = {}
        self.checked: set[DeviceKey] = set()
        self._wake: Latest[None] = Latest()
        #: Set after every pass that found nothing left to write (tests wait on it).
        self.settled = anyio.Event()

    def submit(self, config: Config) -> None:
        """Publish ``config`` from now on."""
        self.config = config
        self.checked = {
            (d.resource_name, d.instance_id) for m in config.mappings for d in m.devices if d.health_check
        }
        self._changed()

    def on_health(self, resource: str, device_id: str, health: str) -> None:
        """A probe result changed (spookd.deviceplugin.probes calls this)."""
        self.health[(resource, device_id)] = health == HEALTHY
        self._changed()

    def _changed(self) -> None:
        self.settled = anyio.Event()
        self._wake.put(None)

    async def run(self) -> None:
        """Publish after every change and every ``resync`` seconds, until cancelled."""
        backoff = Backoff()
        while True:
            with anyio.move_on_after(self.resync):
                await self._wake.get()
            if self.config is None:
                continue
            try:
                while not await self.apply(self.config):
                    pass
                backoff.reset()
                self.settled.set()
            except (DraApiError, OSError, TimeoutError) as exc:
                delay = backoff.next_delay()
                logger.warning("publishing failed; retrying", error=str(exc), retry_in=round(delay, 2))
                await anyio.sleep(delay)
                self._wake.put(None)

    def _unhealthy(self, published: set[DeviceKey], tainted: set[DeviceKey]) -> set[DeviceKey]:
        """Known unhealthy, or checked and not probed yet while new or tainted already: a new
        leader keeps what its predecessor published until its own probes answer."""
        bad = {key for key, ok in self.health.items() if not ok and key in self.checked}
        unknown = self.checked - set(self.health)
        return bad | (unknown & tainted) | (unknown - published)

    async def apply(self, config: Config) -> bool:
        """One pass; True when nothing was left to write."""
        await self._classes(config, remove=False)
        listed = await self.api.slices()
        versions = {str(s["metadata"]["name"]): s["metadata"].get("resourceVersion") for s in listed}
        current = pool_states(listed, self.api.driver)
        published = {key for state in current.values() for key in state.devices}
        unhealthy = self._unhealthy(published, published_taints(listed, self.api.driver))
        writes = plan(current, desired_pools(config), unhealthy, self.api.driver)
        for step in [*writes.remove, *writes.add]:
            await self._write(step, versions)
        await self._classes(config, remove=True)
        if not writes.empty():
            logger.info(
                "published",
                removed=[w.pool for w in writes.remove],
                written=[w.pool for w in writes.add],
                unhealthy=len(unhealthy),
            )
        return writes.empty()

    async def _write(self, step: WritePool, versions: dict[str, Any]) -> None:
        for obj in step.slices:
            name = obj["metadata"]["name"]
            versions[name] = await self.api.put(SLICES, obj, versions.get(name))
        for name in step.stale:
            await self.api.delete(SLICES, "ResourceSlice", name, versions.pop(name, None))

    async def _classes(self, config: Config, *, remove: bool) -> None:
        desired = {c["metadata"]["name"]: c for c in device_classes(config, self.api.driver)}
        for current in await self.api.classes():
            name = current["metadata"]["name"]
            want = desired.pop(name, None)
            if want is None:
                if remove and RESOURCE_ANNOTATION in (current["metadata"].get("annotations") or {}):
                    await self.api.delete(
                        CLASSES, "DeviceClass", name, current["metadata"]["resourceVersion"]
                    )
                continue
            same = (
                current.get("spec") == want["spec"]
                and (current["metadata"].get("annotations") or {}).get(RESOURCE_ANNOTATION)
                == want["metadata"]["annotations"][RESOURCE_ANNOTATION]
            )
            if not same:
                await self.api.put(CLASSES, want, current["metadata"]["resourceVersion"])
        if not remove:
            for want in desired.values():
                await self.api.put(CLASSES, want, None)


async def follow(source: AsyncIterator[SourceEvent], publisher: Publisher, prober: HealthProber) -> None:
    """Feed accepted configurations that DRA mode can publish to ``publisher``; log the rest."""
    async for event in source:
        if isinstance(event, Accepted):
            errors = dra_errors(event.config, None, event.source)
            if errors:
                logger.error(
                    "config rejected for DRA mode, keeping the last good one: {count} error(s)\n{errors}",
                    count=len(errors),
                    errors="\n".join(str(e) for e in errors),
                    source=event.source,
                )
                continue
            logger.info("config accepted", source=event.source)
            every: dict[str, dict[str, Device]] = {}
            for mapping in event.config.mappings:
                for device in mapping.devices:
                    every.setdefault(device.resource_name, {})[device.instance_id] = device
            prober.sync(every)
            publisher.submit(event.config)
        elif isinstance(event, Rejected):
            logger.error(
                "config rejected, keeping the last good configuration: {count} error(s)\n{errors}",
                count=len(event.errors),
                errors="\n".join(str(e) for e in event.errors),
                source=event.source,
            )
        elif isinstance(event, Deleted):
            logger.warning("configuration deleted: withdrawing every device", source=event.source)
            prober.sync({})
            publisher.submit(Config())


async def publish(
    make_source: Callable[[], AsyncIterator[SourceEvent]], api: DraApi, *, resync: float = 60.0
) -> None:
    """One leadership term: follow a fresh source, probe and publish until cancelled."""
    publisher = Publisher(api, resync=resync)
    prober = HealthProber(publisher.on_health)
    async with anyio.create_task_group() as tg:
        await tg.start(prober.run)
        tg.start_soon(publisher.run)
        await follow(make_source(), publisher, prober)
        await anyio.sleep_forever()


async def stop_on_signal(scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` on SIGTERM or SIGINT."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            logger.info("shutting down", signal=signal.Signals(signum).name)
            scope.cancel()
            return
