"""Device health probes (SPEC §10): thresholds, and real listeners on loopback seen by the real kubelet."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import SpookdProcess
from hypothesis import given
from hypothesis import strategies as st
from support.nodeharness import NodeHarness

from spookd.config import HealthCheck
from spookd.health import ProbeState, observe

SENSOR = "example.com/scope"


def test_first_result_decides_then_thresholds_apply() -> None:
    check = HealthCheck(tcp="x:1", failure_threshold=3, success_threshold=2)
    state = observe(ProbeState(), True, check)
    assert state.healthy is True
    for expected in (True, True, False):
        state = observe(state, False, check)
        assert state.healthy is expected
    for expected in (False, True):
        state = observe(state, True, check)
        assert state.healthy is expected


@given(st.lists(st.booleans(), min_size=1, max_size=40), st.integers(1, 5), st.integers(1, 5))
def test_health_flips_only_after_enough_results_in_a_row(
    results: list[bool], fail: int, succeed: int
) -> None:
    check = HealthCheck(path="/x", failure_threshold=fail, success_threshold=succeed)
    state = ProbeState()
    for i, ok in enumerate(results):
        new = observe(state, ok, check)
        if state.healthy is not None and new.healthy != state.healthy:
            streak = results[: i + 1][::-1]
            run = len(streak) if all(r == ok for r in streak) else streak.index(not ok)
            assert run >= (succeed if ok else fail)
        state = new


class Listener:
    """A TCP listener on loopback that can be stopped and started on the same port."""

    def __init__(self) -> None:
        self.port = 0
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(16)
        self.port = sock.getsockname()[1]
        self._sock = sock

        def accept() -> None:
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:
                    return
                conn.close()

        self._thread = threading.Thread(target=accept, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._sock is None:
            return
        self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._sock = None


def hanging_address() -> tuple[socket.socket, list[socket.socket], int]:
    """A loopback port whose accept queue is full: new connects hang until they time out."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        client = socket.socket()
        client.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            client.connect(("127.0.0.1", port))
        fillers.append(client)
    time.sleep(0.1)
    probe = socket.socket()
    probe.settimeout(0.3)
    with pytest.raises(TimeoutError):
        probe.connect(("127.0.0.1", port))  # proves the address hangs rather than refuses
    fillers.append(probe)
    return server, fillers, port


pytestmark = pytest.mark.harness


def test_a_stopped_instrument_becomes_unhealthy_and_comes_back(
    node: NodeHarness, spookd: SpookdProcess, tmp_path: Path
) -> None:
    up = Listener()
    up.start()
    hung, fillers, hung_port = hanging_address()
    marker = tmp_path / "present"
    marker.write_text("")
    spookd.write(f"""\
deviceMapping:
  - hosts: [minikube]
    devices:
      - {{resourceName: {SENSOR}, instanceID: a, healthCheck: {{tcp: "127.0.0.1:{up.port}", interval: 200ms, timeout: 500ms, failureThreshold: 2}}}}
      - {{resourceName: {SENSOR}, instanceID: b, healthCheck: {{tcp: "127.0.0.1:{hung_port}", interval: 200ms, timeout: 300ms}}}}
      - {{resourceName: {SENSOR}, instanceID: c, healthCheck: {{path: {marker}, interval: 200ms}}}}
      - {{resourceName: {SENSOR}, instanceID: d}}
""")
    try:
        spookd.start()
        resources = node.wait_for(
            lambda r: (
                r.is_registered(SENSOR)
                and r[SENSOR].devices == {"a": "Healthy", "b": "Unhealthy", "c": "Healthy", "d": "Healthy"}
            ),
            timeout=20,
        )
        assert resources.allocatable(SENSOR) == 3
        # the hanging probe blocks neither the other devices nor Allocate
        started = time.monotonic()
        admitted = node.admit("pod-1", {"app": {SENSOR: 3}}).raise_for_error()
        assert time.monotonic() - started < 1
        assert admitted.container("app").devices[SENSOR] == ["a", "c", "d"]
        node.remove("pod-1")

        up.stop()
        stopped = time.monotonic()
        node.wait_for(lambda r: r[SENSOR].devices["a"] == "Unhealthy", timeout=5, interval=0.02)
        took = time.monotonic() - stopped
        assert took < 2 * 0.2 + 2 * 0.5 + 0.5, f"unhealthy after {took:.2f}s"
        refused = node.admit("pod-2", {"app": {SENSOR: 3}})
        assert not refused.ok, "an unhealthy device must not be allocatable"

        marker.unlink()
        node.wait_for(lambda r: r[SENSOR].devices["c"] == "Unhealthy", timeout=5)
        marker.write_text("")
        up.start()
        node.wait_for(
            lambda r: r[SENSOR].devices["a"] == "Healthy" and r[SENSOR].devices["c"] == "Healthy", timeout=5
        )
        back = node.admit("pod-3", {"app": {SENSOR: 3}}).raise_for_error()
        assert back.container("app").devices[SENSOR] == ["a", "c", "d"]
    finally:
        hung.close()
        for filler in fillers:
            filler.close()
        up.stop()
