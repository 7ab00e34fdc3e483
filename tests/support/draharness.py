"""The kubelet's plugin manager and DRA manager for tests (``tests/go/cmd/draharness``).

``DraHarness.start(...)`` builds and starts the program; ``.request(op, ...)`` sends
one JSON request and returns its JSON reply. ``.wait_registered(driver)`` polls the
DRA manager until the driver's plugin is registered (the plugin watcher picked up its
socket, asked GetInfo and accepted the services).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from support import gobuild

__all__ = ["DraHarness"]


class DraHarness:
    """A running draharness process."""

    def __init__(self, process: subprocess.Popen[str], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    @classmethod
    def start(
        cls, kubeconfig: Path, kubelet_dir: Path, state_dir: Path, *, node: str, driver: str, log_path: Path
    ) -> DraHarness:
        """Start the harness and wait for its ready line."""
        binary = gobuild.build("draharness")
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [
                    str(binary), "-kubeconfig", str(kubeconfig), "-kubelet-dir", str(kubelet_dir),
                    "-state-dir", str(state_dir), "-node", node, "-driver", driver, "-v", "5",
                ],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1,
            )  # fmt: skip
        harness = cls(process, log_path)
        first = harness._read()
        if first.get("op") != "ready":
            harness.close()
            raise RuntimeError(f"draharness did not start: {first}\n{harness.log_text()[-3000:]}")
        return harness

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"draharness exited ({self.process.poll()}):\n{self.log_text()[-3000:]}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def request(self, op: str, **fields: str) -> dict[str, Any]:
        """One request, its reply."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()
        return self._read()

    def wait_registered(self, timeout: float = 30.0, *, registered: bool = True) -> None:
        """Until the DRA manager has a plugin for the driver (or, ``registered=False``, has none).

        AssertionError after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while bool(self.request("registered").get("registered")) != registered:
            assert time.monotonic() < deadline, (
                f"{'not ' if registered else 'still '}registered within {timeout}s:\n"
                f"{self.log_text()[-3000:]}"
            )
            time.sleep(0.1)

    def log_text(self) -> str:
        """The harness's log (klog on stderr)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        """End the harness (closing stdin ends it); idempotent."""
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
