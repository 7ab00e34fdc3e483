"""The file source: a YAML file watched with watchfiles (SPEC §3).

The parent directory is watched, not the file, so that every way a file changes is
seen: edits in place, editors' atomic renames, and the ``..data`` symlink swap that
the kubelet performs for ConfigMap volumes. Bursts of events are debounced, and a
version is only parsed when its bytes differ from the last one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from loguru import logger
from watchfiles import awatch

from spookd.config import MAX_FILE_BYTES, ConfigError
from spookd.config.versions import Deleted, Rejected, SourceEvent
from spookd.sources.parsing import parse

DEBOUNCE_MS = 30
#: Without events the file's stat is compared this often; this bounds the cost of a
#: change the watch cannot see (made before it started, or on a remote filesystem).
SAFETY_POLL_MS = 250


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _read(path: Path) -> bytes | OSError | None:
    try:
        with path.open("rb") as handle:
            return handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc


async def watch_file(path: Path) -> AsyncIterator[SourceEvent]:
    """Yield a version at start and after every change of the file's bytes."""
    source = str(path)
    last: bytes | None = None
    signature = _signature(path)
    first = True

    async def changed() -> SourceEvent | None:
        nonlocal last, first, signature
        signature = _signature(path)
        data = await anyio.to_thread.run_sync(_read, path)
        if data == last and not first and not isinstance(data, OSError):
            return None
        was_first, first = first, False
        last = data if not isinstance(data, OSError) else None
        if isinstance(data, OSError):
            reason = data.strerror or str(data)
            error = ConfigError(
                source, 1, 1, "", f"cannot read the file: {reason}; check its type and permissions"
            )
            return Rejected(errors=[error], source=source)
        if data is None:
            if was_first:
                logger.warning("configuration file {path} does not exist; waiting for it", path=source)
            return Deleted(source=source)
        return await parse(data, source)

    event = await changed()
    if event is not None:
        yield event
    directory = path.parent
    while True:
        if not directory.is_dir():
            await anyio.sleep(SAFETY_POLL_MS / 1000)
            event = await changed()
            if event is not None:
                yield event
            continue
        try:
            async for changes in awatch(
                directory,
                debounce=DEBOUNCE_MS,
                step=10,
                recursive=False,
                rust_timeout=SAFETY_POLL_MS,
                yield_on_timeout=True,
            ):
                if not changes and _signature(path) == signature:
                    continue
                event = await changed()
                if event is not None:
                    yield event
        except FileNotFoundError:
            continue
        except OSError as exc:
            logger.warning(
                "cannot watch {dir} ({error}); checking the file every {poll}s instead",
                dir=str(directory),
                error=exc.strerror or str(exc),
                poll=SAFETY_POLL_MS / 1000,
            )
            while True:
                await anyio.sleep(SAFETY_POLL_MS / 1000)
                if _signature(path) != signature:
                    event = await changed()
                    if event is not None:
                        yield event
