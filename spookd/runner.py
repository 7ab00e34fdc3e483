"""Builds the daemon from its Settings and runs it on one event loop."""

from __future__ import annotations

import gc
import importlib.util
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
from loguru import logger

from spookd.app import Cleaner, ReportingSink, run
from spookd.claims import BlockedDevices, SharedClaims
from spookd.config.versions import ObjectRef, SourceEvent
from spookd.settings import PublishSettings, Settings

#: How long to wait before trying again to reach the API for the node's labels.
_LABELS_RETRY = 30.0


def _label_feed(settings: Settings, api: list[Any]) -> AsyncIterator[Mapping[str, str]]:
    """This node's labels from the API: connects (once) when a mapping first needs them."""

    async def feed() -> AsyncIterator[Mapping[str, str]]:
        from spookd.kube.client import connect
        from spookd.kube.nodelabels import NodeLabels

        while not api:
            try:
                api.append(await connect())
            except ConnectionError as exc:
                logger.error(
                    "cannot read this node's labels: {error}; mappings with a nodeSelector select "
                    "no node until then",
                    error=str(exc),
                )
                await anyio.sleep(_LABELS_RETRY)
        async for labels in NodeLabels(api[0], settings.node_name, settings.tuning.watch_timeout).changes():
            yield labels

    return feed()


async def _main(settings: Settings) -> None:
    if settings.dra:
        await _main_dra(settings)
        return
    source: AsyncIterator[SourceEvent]
    #: The API client, once connected (by the claims, the ConfigMap source or the label feed).
    shared_api: list[Any] = []
    events: ReportingSink | None = None
    cleaner: Cleaner | None = None
    claims: SharedClaims | None = None
    blocked = BlockedDevices()
    if settings.config is not None:
        from spookd.sources.file import watch_file

        source = watch_file(settings.config)
    if settings.uses_api:
        # kubernetes-asyncio costs ~70 MiB and 0.6 s to import: only when it is used
        from spookd.kube.client import connect
        from spookd.kube.leases import LeaseClaims

        api = await connect()
        shared_api.append(api)
        tuning = settings.tuning
        claims = LeaseClaims(
            api,
            settings.claims_namespace,
            settings.node_name,
            settings.pod_resources_socket,
            blocked.update,
            lease_duration=tuning.lease_duration,
            claim_grace=tuning.claim_grace,
            poll=tuning.claim_poll,
            watch_timeout=tuning.watch_timeout,
        )
        if settings.configmap is not None:
            from spookd.kube.events import KubeEvents
            from spookd.sources.configmap import watch_configmap

            namespace, name = settings.configmap.split("/")
            source = watch_configmap(
                namespace, name, settings.configmap_key, api, settings.tuning.watch_timeout
            )
            events = KubeEvents(api, settings.node_name, ObjectRef(namespace, name))
        if settings.cleanup_stale_resources:
            from spookd.kube.cleanup import StaleResourceCleaner

            cleaner = StaleResourceCleaner(api, settings.node_name)
    assert settings.config is not None or settings.configmap is not None
    await run(
        source,
        settings.node_name,
        settings.plugin_dir,
        events=events,
        cleaner=cleaner,
        claims=claims,
        blocked=blocked,
        http_addr=settings.http_addr,
        report_failing_after=settings.tuning.registration_event_after,
        node_labels=lambda: _label_feed(settings, shared_api),
    )


async def _main_dra(settings: Settings) -> None:
    from spookd.app import run_dra
    from spookd.dra.plugin import DraPlugin
    from spookd.dra.preparer import Preparer
    from spookd.kube.client import connect
    from spookd.kube.draclaims import ClaimReader

    api = await connect()
    source: AsyncIterator[SourceEvent]
    events: ReportingSink | None = None
    if settings.configmap is not None:
        from spookd.kube.events import KubeEvents
        from spookd.sources.configmap import watch_configmap

        namespace, name = settings.configmap.split("/")
        source = watch_configmap(namespace, name, settings.configmap_key, api, settings.tuning.watch_timeout)
        events = KubeEvents(api, settings.node_name, ObjectRef(namespace, name))
    else:
        from spookd.sources.file import watch_file

        assert settings.config is not None
        source = watch_file(settings.config)
    driver = settings.dra_driver
    state_dir = settings.kubelet_dir / "plugins" / driver
    preparer = Preparer(driver, settings.node_name, settings.cdi_dir, state_dir, ClaimReader(api))
    plugin = DraPlugin(driver, settings.kubelet_dir, preparer)
    await run_dra(source, settings.node_name, plugin, events=events, http_addr=settings.http_addr)


def run_daemon(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, on uvloop where it is installed."""
    use_uvloop = importlib.util.find_spec("uvloop") is not None
    logger.debug("event loop", uvloop=use_uvloop)
    # Everything imported so far lives as long as the process: keep it out of the
    # collector's full passes.
    gc.freeze()
    try:
        anyio.run(_main, settings, backend="asyncio", backend_options={"use_uvloop": use_uvloop})
    except ConnectionError as exc:
        logger.error("{error}", error=str(exc))
        raise SystemExit(1) from None


async def _publish_main(settings: PublishSettings) -> None:
    from spookd.kube.client import connect
    from spookd.kube.draapi import DraApi
    from spookd.publisher import publish, stop_on_signal

    api = await connect()
    writer = DraApi(api, settings.driver)

    def make_source() -> AsyncIterator[SourceEvent]:
        if settings.config is not None:
            from spookd.sources.file import watch_file

            return watch_file(settings.config)
        from spookd.sources.configmap import watch_configmap

        assert settings.configmap is not None
        namespace, name = settings.configmap.split("/")
        return watch_configmap(namespace, name, settings.configmap_key, api, settings.tuning.watch_timeout)

    async def leading() -> None:
        await publish(make_source, writer, resync=settings.resync)

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_on_signal, tg.cancel_scope)
        if settings.lease_namespace is None:
            logger.warning("no --lease-namespace: publishing without leader election; run one publisher only")
            await leading()
        else:
            from spookd.kube.election import LeaderElection

            election = LeaderElection(
                api,
                settings.lease_namespace,
                settings.lease_name,
                settings.identity,
                settings.tuning.lease_duration,
            )
            await election.run(leading)


def run_publisher(settings: PublishSettings) -> None:
    """``spookd publish`` until SIGTERM/SIGINT."""
    use_uvloop = importlib.util.find_spec("uvloop") is not None
    gc.freeze()
    try:
        anyio.run(_publish_main, settings, backend="asyncio", backend_options={"use_uvloop": use_uvloop})
    except ConnectionError as exc:
        logger.error("{error}", error=str(exc))
        raise SystemExit(1) from None
