"""Builds the daemon from command-line settings and runs it on one event loop."""

from __future__ import annotations

import gc
import importlib.util
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
from loguru import logger

from spookd.app import AppState, ResourceLifecycle, SharedClaims, run
from spookd.config.versions import EventSink, ObjectRef, SourceEvent


def run_daemon(
    *,
    config: Path | None,
    configmap: str | None,
    configmap_key: str,
    node_name: str,
    plugin_dir: Path,
    http_addr: tuple[str, int] | None,
    cleanup_stale_resources: bool = False,
    lease_namespace: str | None = None,
    pod_resources_socket: str = "/var/lib/kubelet/pod-resources/kubelet.sock",
) -> None:
    """Run until SIGTERM/SIGINT, on uvloop where it is installed."""
    state = AppState(node_name=node_name)
    extra: list[Callable[[AppState], Coroutine[Any, Any, None]]] = []
    if http_addr is not None:
        from spookd.observe.http import serve_http

        host, port = http_addr
        extra.append(lambda s: serve_http(host, port, s))

    async def main() -> None:
        source: AsyncIterator[SourceEvent]
        events: EventSink | None = None
        lifecycle: Callable[[anyio.abc.TaskGroup], ResourceLifecycle] | None = None
        api = None
        claims: Callable[[Callable[[str, set[str]], None]], SharedClaims] | None = None
        if configmap is not None or cleanup_stale_resources or lease_namespace:
            from spookd.kube.client import connect

            api = await connect()
        if config is not None:
            from spookd.sources.file import watch_file

            source = watch_file(config)
        else:
            assert configmap is not None
            assert api is not None
            from spookd.kube.events import KubeEvents
            from spookd.sources.configmap import watch_configmap

            namespace, name = configmap.split("/")
            source = watch_configmap(namespace, name, configmap_key, api)
            events = KubeEvents(api, node_name, ObjectRef(namespace, name))
        if cleanup_stale_resources:
            from spookd.kube.cleanup import StaleResourceCleaner

            cleaner_api = api
            assert cleaner_api is not None
            lifecycle = lambda tg: StaleResourceCleaner(cleaner_api, node_name, tg)  # noqa: E731
        if api is not None:
            from spookd.kube.leases import LeaseClaims

            claims_api = api
            namespace_for_leases = lease_namespace or (configmap.split("/")[0] if configmap else "default")
            claims = lambda blocked: LeaseClaims(  # noqa: E731
                claims_api, namespace_for_leases, node_name, pod_resources_socket, blocked
            )
        await run(
            source,
            node_name,
            plugin_dir,
            state=state,
            extra_tasks=extra,
            events=events,
            lifecycle=lifecycle,
            claims=claims,
        )

    use_uvloop = importlib.util.find_spec("uvloop") is not None
    logger.debug("event loop", uvloop=use_uvloop)
    # Everything imported so far lives as long as the process: keep it out of the
    # collector's full passes.
    gc.freeze()
    try:
        anyio.run(main, backend="asyncio", backend_options={"use_uvloop": use_uvloop})
    except ConnectionError as exc:
        logger.error("{error}", error=str(exc))
        raise SystemExit(1) from None
