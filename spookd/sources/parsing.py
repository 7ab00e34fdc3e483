"""Turning a configuration's bytes into a source event, off the event loop (SPEC §3, §9).

Both sources parse here: in a worker thread, with the cyclic garbage collector kept
out of the parse. The rules themselves are the pure spookd.config.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

import anyio

from spookd.config import Config, ConfigInvalid, load_config
from spookd.config.versions import Accepted, Rejected, SourceEvent


async def parse(data: bytes, source: str) -> SourceEvent:
    """Validate ``data`` in a worker thread, keeping the event loop responsive."""
    try:
        config = await anyio.to_thread.run_sync(load_without_collector, data, source)
    except ConfigInvalid as exc:
        return Rejected(errors=exc.errors, source=source)
    return Accepted(config=config, source=source)


def load_without_collector(data: bytes, source: str) -> Config:
    """``load_config`` with the cyclic garbage collector paused around it."""
    with _collector_paused():
        return load_config(data, source)


_paused = 0
_reenable = False
_paused_lock = threading.Lock()


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Keep the cyclic garbage collector out of a parse.

    Composing a large document makes ~10 nodes per device, all alive until the walk
    ends, so each collection the allocations trigger finds nothing to free; the full
    ones walk the whole heap holding the GIL (half the parse time, and a stall of the
    daemon's event loop while the parse runs in a worker thread). The switch is
    process-wide, so concurrent parses count who still needs it off.
    """
    global _paused, _reenable  # noqa: PLW0603 - one process-wide switch, counted across threads
    with _paused_lock:
        if _paused == 0:
            _reenable = gc.isenabled()
            gc.disable()
        _paused += 1
    try:
        yield
    finally:
        with _paused_lock:
            _paused -= 1
            if _paused == 0 and _reenable:
                gc.enable()
