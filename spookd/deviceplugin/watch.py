"""Watch the plugin directory for kubelet restarts and deleted sockets (SPEC §5)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import anyio
from loguru import logger

from spookd.dirwatch import directory_changes, file_identity
from spookd.observe import metrics

KUBELET_SOCKET = "kubelet.sock"
#: Without inotify events the files are compared this often. inotify reports every
#: change of a local directory, and a lost ListAndWatch stream re-registers too, so
#: this only bounds what a filesystem without inotify would cost.
SAFETY_POLL = 5.0
DEBOUNCE = 0.01


class FileChecker(Protocol):
    """A server that compares its socket and kubelet.sock with what it bound and registered with."""

    def check_files(self) -> None:
        """Look at the files now."""


async def watch_plugin_dir(plugin_dir: Path, servers: Callable[[], Iterable[FileChecker]]) -> None:
    """Tell every server to check its files whenever the plugin directory changes."""
    kubelet = plugin_dir / KUBELET_SOCKET
    seen = file_identity(kubelet)
    missing_logged = False
    async for _ in directory_changes(plugin_dir, safety_poll=SAFETY_POLL, debounce=DEBOUNCE):
        if not await anyio.Path(plugin_dir).is_dir():
            if not missing_logged:
                logger.warning("plugin directory {dir} does not exist; waiting for it", dir=str(plugin_dir))
                missing_logged = True
            continue
        missing_logged = False
        now = file_identity(kubelet)
        if now is not None and seen is not None and now != seen:
            metrics.KUBELET_RESTARTS.inc()
            logger.info("kubelet restart seen", kubelet=str(kubelet))
        if now is not None:
            seen = now
        for server in servers():
            server.check_files()
