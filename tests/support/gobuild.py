"""Build the Go test programs under ``tests/go/cmd/<program>``.

``build("nodeharness")`` runs ``go build -o tests/go/.bin/nodeharness
./cmd/nodeharness`` in ``tests/go`` once per process (Go's build cache makes
later builds in other processes fast) and returns the binary's path.
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import subprocess
import threading
import time

__all__ = ["GO_MODULE_DIR", "BIN_DIR", "BUILD_SECONDS", "GoBuildError", "build", "go_binary"]

log = logging.getLogger(__name__)

GO_MODULE_DIR = pathlib.Path(__file__).resolve().parent.parent / "go"
BIN_DIR = GO_MODULE_DIR / ".bin"

#: Wall-clock seconds each build took in this process (program -> seconds).
BUILD_SECONDS: dict[str, float] = {}

_lock = threading.Lock()
_built: dict[str, pathlib.Path] = {}


class GoBuildError(RuntimeError):
    """``go`` is missing or ``go build`` failed."""


def go_binary() -> str:
    """Return the path of the ``go`` tool, or raise GoBuildError."""
    found = shutil.which("go")
    if found is None:
        for candidate in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go"):
            if os.access(candidate, os.X_OK):
                found = candidate
                break
    if found is None:
        raise GoBuildError(
            "the Go toolchain ('go') was not found on PATH or in /usr/local/go/bin; "
            "it is required to build the test programs in tests/go"
        )
    return found


def build(program: str) -> pathlib.Path:
    """Build ``tests/go/cmd/<program>`` into ``tests/go/.bin/<program>`` (once per process)."""
    if not program or "/" in program or program.startswith("."):
        raise ValueError(f"bad program name: {program!r}")
    with _lock:
        cached = _built.get(program)
        if cached is not None:
            return cached
        src = GO_MODULE_DIR / "cmd" / program
        if not src.is_dir():
            raise GoBuildError(f"no Go program at {src}")
        go = go_binary()
        BIN_DIR.mkdir(parents=True, exist_ok=True)
        out = BIN_DIR / program
        # Build to a private name and rename, so concurrent test processes
        # never execute a half-written binary.
        tmp = BIN_DIR / f".{program}.{os.getpid()}.tmp"
        started = time.monotonic()
        proc = subprocess.run(
            [go, "build", "-o", str(tmp), f"./cmd/{program}"],
            cwd=GO_MODULE_DIR,
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.monotonic() - started
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise GoBuildError(
                f"go build ./cmd/{program} failed (exit {proc.returncode}) after {elapsed:.1f}s:\n"
                f"{proc.stdout}{proc.stderr}"
            )
        os.replace(tmp, out)
        BUILD_SECONDS[program] = elapsed
        log.info("built %s in %.2fs -> %s", program, elapsed, out)
        _built[program] = out
        return out
