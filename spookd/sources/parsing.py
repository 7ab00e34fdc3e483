"""Turning a configuration's bytes into a source event, off the event loop (SPEC §3, §9).

Both sources parse here: in a worker thread, with the cyclic garbage collector's
full passes kept out of the parse. The rules themselves are the pure spookd.config.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
from collections.abc import Iterator

import anyio

from spookd.config import Config, ConfigInvalid, load_config
from spookd.config.versions import Accepted, Rejected, SourceEvent


async def parse(data: bytes, source: str) -> SourceEvent:
    """Validate ``data`` in a worker thread, keeping the event loop responsive."""
    try:
        config = await anyio.to_thread.run_sync(load_off_loop, data, source)
    except ConfigInvalid as exc:
        return Rejected(errors=exc.errors, source=source)
    return Accepted(config=config, source=source)


def load_off_loop(data: bytes, source: str) -> Config:
    """``load_config`` in the calling (worker) thread, with the settings of ``_parse_settings``."""
    with _parse_settings():
        return load_config(data, source)


#: The oldest generation's threshold during a parse: never reached.
_NEVER = 1 << 30
#: The interpreter's switch interval during a parse (seconds; CPython's default is 5 ms).
PARSE_SWITCH_INTERVAL = 0.001
_paused = 0
_saved: tuple[int, int, int] | None = None
_saved_interval = 0.005
_paused_lock = threading.Lock()


@contextlib.contextmanager
def _parse_settings() -> Iterator[None]:
    """Keep the collector's full passes out of a parse, and hand the GIL back sooner.

    Composing a large document makes ~10 objects per device, all alive until the walk
    ends, so the full passes the allocations trigger find nothing to free and walk the
    whole heap holding the GIL (half the parse time). The young and middle passes stay:
    each scans only what was made since the one before, and they untrack the tuples of
    strings a configuration is made of (the device structs are never tracked). With the
    collector off altogether, the first pass after the parse scanned all it had made at
    once: 15-27 ms holding the GIL, a stall of the event loop, at 10 000 devices
    (docs/design.md, "Footprint").

    The walk is Python: the event loop's thread gets the GIL back only when the
    parsing thread is asked to hand it over, after the switch interval (5 ms, the
    whole stall budget). During a parse it is 1 ms. Both settings are process-wide,
    so concurrent parses count who still needs them.
    """
    global _paused, _saved, _saved_interval  # noqa: PLW0603 - process-wide settings, counted across threads
    with _paused_lock:
        if _paused == 0:
            _saved = gc.get_threshold()
            gc.set_threshold(_saved[0], _saved[1], _NEVER)
            _saved_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(_saved_interval, PARSE_SWITCH_INTERVAL))
        _paused += 1
    try:
        yield
    finally:
        with _paused_lock:
            _paused -= 1
            if _paused == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                sys.setswitchinterval(_saved_interval)
