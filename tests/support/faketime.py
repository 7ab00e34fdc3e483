"""libfaketime for tests: a process whose wall clock is offset, its monotonic clock untouched.

The Debian package is installed with apt-get when missing (as the e2e walkthrough
installs containerd), so a fresh CI machine needs nothing by hand.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

LIBRARY = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def library() -> Path:
    """The path of libfaketime, installing the Debian package first if needed."""
    if LIBRARY.exists():
        return LIBRARY
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "libfaketime"],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed with {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
    if not LIBRARY.exists():
        raise RuntimeError(f"apt-get installed libfaketime but {LIBRARY} is missing")
    return LIBRARY


def environment(offset_seconds: int) -> dict[str, str]:
    """Environment variables that run a process with its wall clock ``offset_seconds`` off."""
    return {
        "LD_PRELOAD": str(library()),
        "FAKETIME": f"{offset_seconds:+d}s",
        # Only the wall clock is wrong, as on a real node; the monotonic clock stays true.
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        # Read FAKETIME once: a fixed offset, without a file lookup on every clock call.
        "FAKETIME_NO_CACHE": "0",
    }


def offset_seen(offset_seconds: int) -> tuple[float, float]:
    """(wall clock offset, monotonic offset) a child process sees under ``environment``.

    Exact however long the child takes to start: CLOCK_MONOTONIC is one clock for
    every process, so the wall offset is the child's wall minus monotonic reading
    compared with this process's, and the monotonic offset is how far the child's
    reading falls outside the interval this process saw around it (0 inside).
    """
    script = "import time; print(time.time(), time.monotonic())"
    before_mono = time.monotonic()
    here = time.time() - time.monotonic()
    done = subprocess.run(
        ["python3", "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, **environment(offset_seconds)},
        check=True,
        timeout=30,
    )
    after_mono = time.monotonic()
    wall, mono = (float(part) for part in done.stdout.split())
    outside = max(0.0, before_mono - mono, mono - after_mono)
    return (wall - mono) - here, outside
