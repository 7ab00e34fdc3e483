"""promtool, built from the Prometheus Go module at a pinned version, to check the chart's rules.

``promtool_binary()`` installs ``github.com/prometheus/prometheus/cmd/promtool@PROMETHEUS_VERSION``
into ``tests/go/.bin/promtool-<version>`` with ``go install`` (GOBIN in a private
directory, renamed into place), once; later calls reuse it. The ``remove_all_sd`` tag
leaves out Prometheus' service discoveries (every cloud's SDK), which checking rules
does not need: the cold build drops from ~12 to a few CPU-minutes.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from support import gobuild

#: The Prometheus release whose promtool checks the rules.
PROMETHEUS_VERSION = "v0.316.0"

#: Seconds the ``go install`` took in this process (absent: it was reused).
BUILD_SECONDS: dict[str, float] = {}


def promtool_binary() -> Path:
    """Path to promtool of PROMETHEUS_VERSION, installing it first if needed."""
    gobuild.BIN_DIR.mkdir(parents=True, exist_ok=True)
    binary = gobuild.BIN_DIR / f"promtool-{PROMETHEUS_VERSION}"
    with (gobuild.BIN_DIR / ".promtool.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():
            return binary
        with tempfile.TemporaryDirectory(dir=gobuild.BIN_DIR) as gobin:
            env = {**os.environ, "GOBIN": gobin, "GOFLAGS": "-trimpath"}
            started = time.monotonic()
            proc = subprocess.run(
                [
                    gobuild.go_binary(),
                    "install",
                    "-tags",
                    "remove_all_sd",
                    f"github.com/prometheus/prometheus/cmd/promtool@{PROMETHEUS_VERSION}",
                ],
                # Outside tests/go: `go install pkg@version` ignores the current module.
                cwd=gobin,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            BUILD_SECONDS["promtool"] = time.monotonic() - started
            if proc.returncode != 0:
                raise gobuild.GoBuildError(
                    f"go install promtool {PROMETHEUS_VERSION} failed (exit {proc.returncode}):\n"
                    f"{proc.stdout}{proc.stderr}"
                )
            shutil.move(str(Path(gobin) / "promtool"), binary)
        return binary
