"""Watch the plugin directory for kubelet restarts and deleted sockets (SPEC §5)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import anyio
from loguru import logger
from watchfiles import awatch

from spookd.deviceplugin.server import KUBELET_SOCKET, ResourceServer, file_identity
from spookd.observe import metrics

#: Even without events, files are compared this often (a missed event costs at most this).
SAFETY_POLL_MS = 1000


async def watch_plugin_dir(plugin_dir: Path, servers: Callable[[], Iterable[ResourceServer]]) -> None:
    """Tell every server to check its files whenever the plugin directory changes."""
    kubelet = plugin_dir / KUBELET_SOCKET
    seen = file_identity(kubelet)

    def check() -> None:
        nonlocal seen
        now = file_identity(kubelet)
        if now is not None and seen is not None and now != seen:
            metrics.KUBELET_RESTARTS.inc()
            logger.info("kubelet restart seen", kubelet=str(kubelet))
        if now is not None:
            seen = now
        for server in servers():
            server.check_files()

    while True:
        if not await anyio.Path(plugin_dir).is_dir():
            logger.warning("plugin directory {dir} does not exist; waiting for it", dir=str(plugin_dir))
            # inotify cannot watch a directory that does not exist: time is all there is to wait on
            while not await anyio.Path(plugin_dir).is_dir():  # noqa: ASYNC110
                await anyio.sleep(SAFETY_POLL_MS / 1000)
        try:
            async for _ in awatch(
                plugin_dir,
                debounce=10,
                step=5,
                recursive=False,
                rust_timeout=SAFETY_POLL_MS,
                yield_on_timeout=True,
            ):
                check()
        except FileNotFoundError:
            continue
        except OSError as exc:
            logger.warning(
                "cannot watch the plugin directory {dir} ({error}); checking it every {poll}s instead",
                dir=str(plugin_dir),
                error=exc.strerror or str(exc),
                poll=SAFETY_POLL_MS / 1000,
            )
            while True:
                await anyio.sleep(SAFETY_POLL_MS / 1000)
                check()
