"""Watch one directory through inotify on the event loop, and tell files from their replacements.

The plugin directory (kubelet restarts, deleted sockets) and the configuration
file's directory (edits, the ``..data`` symlink swap of ConfigMap volumes) are
watched the same way: the inotify descriptor is read by the event loop itself, so
an idle daemon makes no wake-ups at all, and a safety poll of seconds (not
milliseconds) covers what inotify cannot report (a remote filesystem, a
directory that does not exist yet, inotify's limits used up).
"""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from asyncinotify import Inotify, Mask
from loguru import logger

FileIdentity = tuple[int, int, int]

_CHANGES = (
    Mask.CREATE
    | Mask.DELETE
    | Mask.MOVED_FROM
    | Mask.MOVED_TO
    | Mask.MODIFY
    | Mask.CLOSE_WRITE
    | Mask.ATTRIB
    | Mask.DELETE_SELF
    | Mask.MOVE_SELF
    | Mask.ONLYDIR
)
_GONE = Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.IGNORED
#: ``struct inotify_event`` without its name: wd, mask, cookie, the name's length.
_EVENT = struct.Struct("iIII")
#: Holds at least one event with the longest name (16 + NAME_MAX + 1 bytes).
_READ_SIZE = 4096


def file_identity(path: Path) -> FileIdentity | None:
    """What tells a file from its replacement: inode numbers are reused, change times are not."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


async def _masks(inotify: Inotify) -> int:
    """Wait for events and return their masks, or-ed together.

    The descriptor is read here rather than through ``Inotify.get``, which builds a
    pathlib.Path of every event's file name. Python 3.11's pathlib interns each name,
    and most names seen here are used once (the kubelet writes its checkpoint through
    a ``.<random>`` temporary file in the plugin directory at every registration), so
    each reload put ~10 new entries through the interpreter's interned-string table,
    whose rebuild every few thousand reloads allocates ~1 MiB that the heap then
    keeps (docs/design.md, "Footprint").
    """
    await anyio.wait_readable(inotify.fd)
    data = os.read(inotify.fd, _READ_SIZE)
    mask = offset = 0
    while offset + _EVENT.size <= len(data):
        _wd, event_mask, _cookie, length = _EVENT.unpack_from(data, offset)
        mask |= event_mask
        offset += _EVENT.size + length
    return mask


async def directory_changes(directory: Path, *, safety_poll: float, debounce: float) -> AsyncIterator[bool]:
    """Yield True after each burst of changes in ``directory``, False after ``safety_poll`` quiet seconds.

    The first value comes at once, and once a watch stands it stood before the value
    that follows it, so a reader that looks at its files after each value misses no
    change. A directory that does not exist (yet, or any more) is looked for every
    ``safety_poll`` seconds.
    """
    warned = False
    while True:
        try:
            inotify = Inotify()
        except OSError as exc:
            if not warned:
                logger.warning(
                    "cannot use inotify ({error}); checking {dir} every {poll}s instead",
                    error=exc.strerror or str(exc),
                    dir=str(directory),
                    poll=safety_poll,
                )
                warned = True
            yield False
            await anyio.sleep(safety_poll)
            continue
        with inotify:
            try:
                inotify.add_watch(directory, _CHANGES)
            except OSError as exc:
                # Missing or not a directory: time is all there is to wait on.
                if not isinstance(exc, FileNotFoundError | NotADirectoryError) and not warned:
                    logger.warning(
                        "cannot watch {dir} ({error}); checking it every {poll}s instead",
                        dir=str(directory),
                        error=exc.strerror or str(exc),
                        poll=safety_poll,
                    )
                    warned = True
                yield False
                await anyio.sleep(safety_poll)
                continue
            warned = False
            yield True  # the watch stands: look now
            gone = False
            while not gone:
                changed = False
                with anyio.move_on_after(safety_poll):
                    gone = bool(await _masks(inotify) & _GONE)
                    changed = True
                    # A burst (an editor's save, a symlink swap) ends when the
                    # directory has been quiet for ``debounce`` seconds.
                    while not gone:
                        with anyio.move_on_after(debounce) as quiet:
                            gone = bool(await _masks(inotify) & _GONE)
                        if quiet.cancelled_caught:
                            break
                yield changed
