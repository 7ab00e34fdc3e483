"""Shared fixtures: anyio on asyncio, short plugin directories for Unix sockets."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import gobuild
from support.apiserver import ApiServer
from support.helm import helm_binary
from support.nodeharness import NodeHarness
from support.promtool import promtool_binary

DATA = Path(__file__).parent / "data"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the Go programs the collected tests need, before any of them runs.

    A cold build (a fresh machine: modules downloaded, k8s.io/kubernetes compiled)
    takes minutes, longer than one test's timeout; built here, outside every test,
    the fixtures later find them in Go's build cache.
    """
    markers = {marker.name for item in session.items for marker in item.iter_markers()}
    programs = []
    if "harness" in markers:
        programs += ["nodeharness", "goplugin", "podresources-list"]
    if "apiserver" in markers:
        programs.append("apiserver")
    names = {item.path.name for item in session.items}
    if "test_dra_schedule.py" in names:
        programs.append("e2enode")
    if "draharness" in markers:
        programs.append("draharness")
    for program in programs:
        gobuild.build(program)
    if names & {"test_deploy.py", "test_monitoring.py", "test_schema.py", "test_migration.py"}:
        helm_binary()
    if "test_monitoring.py" in names:
        promtool_binary()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def plugin_dir() -> Iterator[Path]:
    """A fresh plugin directory with a short path (Unix socket paths hold 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="spk-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def node(plugin_dir: Path, tmp_path: Path) -> Iterator[NodeHarness]:
    """The kubelet's real device manager, in its own mount namespace over ``plugin_dir``."""
    harness = NodeHarness(log_dir=tmp_path)
    harness.start(plugin_dir)
    try:
        yield harness
    finally:
        harness.close()


class SpookdProcess:
    """`spookd run` as a subprocess with a config file, logging JSON lines to a file."""

    def __init__(self, plugin_dir: Path, workdir: Path, node_name: str = "minikube") -> None:
        self.plugin_dir = plugin_dir
        self.config = workdir / "config.yaml"
        self.log = workdir / "spookd.log"
        self.node_name = node_name
        self.process: subprocess.Popen[bytes] | None = None

    def write(self, text: str) -> None:
        """Replace the configuration atomically, as an editor or the kubelet would."""
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config)

    def start(
        self,
        *extra: str,
        user: str | None = None,
        configmap: str | None = None,
        kubeconfig: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> SpookdProcess:
        """Start serving; returns at once (wait on the node for registration)."""
        source = ["--configmap", configmap] if configmap else ["--config", str(self.config)]
        argv = [
            sys.executable, "-m", "spookd", "run", *source,
            "--node-name", self.node_name, "--plugin-dir", str(self.plugin_dir),
            "--http-addr", "", "--log-format", "json", "--log-level", "debug", *extra,
        ]  # fmt: skip
        if user is not None:
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
        environment = {**os.environ, **(env or {})}
        if kubeconfig:
            environment["KUBECONFIG"] = str(kubeconfig)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(argv, stderr=log, stdin=subprocess.DEVNULL, env=environment)
        return self

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, and the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"spookd did not stop within {timeout}s:\n{self.log_text()}") from None
        return self.process.returncode

    def open_fds(self) -> int:
        """How many file descriptors the process holds."""
        assert self.process is not None
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def log_text(self) -> str:
        """Everything Spookd logged so far."""
        return self.log.read_text() if self.log.exists() else ""

    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines, parsed (a last line still being written is left for later)."""
        text = self.log_text()
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.startswith("{")]


@pytest.fixture
def spookd(plugin_dir: Path, tmp_path: Path) -> Iterator[SpookdProcess]:
    """A Spookd process (not started) serving ``plugin_dir``; stopped after the test."""
    process = SpookdProcess(plugin_dir, tmp_path)
    try:
        yield process
    finally:
        if process.process is not None and process.process.poll() is None:
            process.stop()


@pytest.fixture(scope="session")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A real kube-apiserver on an embedded etcd, shared by the session."""
    server = ApiServer.start(tmp_path_factory.mktemp("apiserver"))
    try:
        yield server
    finally:
        server.close()
