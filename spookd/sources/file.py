"""The file source: a YAML file, its directory watched through inotify (SPEC §3).

The parent directory is watched (inotify, spookd.dirwatch), not the file, so that
every way a file changes is seen: edits in place, editors' atomic renames, and the
``..data`` symlink swap that the kubelet performs for ConfigMap volumes. Bursts of
events are debounced, and a version is only parsed when its bytes differ from the
last one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from loguru import logger

from spookd.config import MAX_FILE_BYTES, ConfigError
from spookd.config.versions import Deleted, Rejected, SourceEvent
from spookd.dirwatch import directory_changes, file_identity
from spookd.sources.parsing import parse

DEBOUNCE = 0.03
#: Without inotify events the file's stat is compared this often: a change inotify
#: cannot see (a remote filesystem, a directory that does not exist yet) costs at most
#: this. The watch starts before the first read, so no local change is missed.
SAFETY_POLL = 5.0


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
    signature = file_identity(path)
    first = True

    async def changed() -> SourceEvent | None:
        nonlocal last, first, signature
        signature = file_identity(path)
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

    # The directory is watched from before the first read, so no edit falls between.
    async for activity in directory_changes(path.parent, safety_poll=SAFETY_POLL, debounce=DEBOUNCE):
        if not activity and not first and file_identity(path) == signature:
            continue
        event = await changed()
        if event is not None:
            yield event
