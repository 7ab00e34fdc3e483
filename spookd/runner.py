"""Builds the daemon from command-line settings and runs it on one event loop."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
from loguru import logger

from spookd.app import AppState, run
from spookd.sources import SourceEvent


def run_daemon(
    *,
    config: Path | None,
    configmap: str | None,
    configmap_key: str,
    node_name: str,
    plugin_dir: Path,
    http_addr: tuple[str, int] | None,
) -> None:
    """Run until SIGTERM/SIGINT, on uvloop where it is installed."""
    state = AppState(node_name=node_name)
    extra: list[Callable[[AppState], Awaitable[None]]] = []
    if http_addr is not None:
        from spookd.observe.http import serve_http

        host, port = http_addr
        extra.append(lambda s: serve_http(host, port, s))

    async def main() -> None:
        source: AsyncIterator[SourceEvent]
        if config is not None:
            from spookd.sources.file import watch_file

            source = watch_file(config)
        else:
            assert configmap is not None
            from spookd.sources.configmap import watch_configmap

            namespace, name = configmap.split("/")
            source = watch_configmap(namespace, name, configmap_key)
        await run(source, node_name, plugin_dir, state=state, extra_tasks=extra)

    use_uvloop = importlib.util.find_spec("uvloop") is not None
    logger.debug("event loop", uvloop=use_uvloop)
    anyio.run(main, backend="asyncio", backend_options={"use_uvloop": use_uvloop})
