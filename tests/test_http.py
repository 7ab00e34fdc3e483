"""/healthz, /readyz and /metrics of a running Spookd, driven by the real device manager (SPEC §7)."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from conftest import SpookdProcess
from prometheus_client.parser import text_string_to_metric_families
from support.nodeharness import NodeHarness

pytestmark = pytest.mark.harness

WALKTHROUGH = """\
deviceMapping:
  - hosts: [minikube]
    devices:
      - {resourceName: example.com/widget, instanceID: "0001", env: {IP: 192.168.0.200}}
      - {resourceName: example.com/thingamajig, instanceID: A1234}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def samples(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = get(f"{base}/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(base: str, name: str, **labels: str) -> float:
    return samples(base).get((name, tuple(sorted(labels.items()))), 0.0)


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_probes_and_metrics_follow_what_spookd_does(node: NodeHarness, spookd: SpookdProcess) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    spookd.write("deviceMapping: [\n")  # invalid from the start: not ready
    spookd.start("--http-addr", f"127.0.0.1:{port}")
    eventually(lambda: get(f"{base}/healthz")[0] == 200)
    eventually(lambda: metric(base, "spookd_config_reloads_total", result="rejected") == 1)
    status, reason = get(f"{base}/readyz")
    assert status == 503
    assert "no valid configuration" in reason

    spookd.write(WALKTHROUGH)
    node.wait_for(
        lambda r: r.is_registered("example.com/widget") and r.is_registered("example.com/thingamajig"),
        timeout=20,
    )
    eventually(lambda: get(f"{base}/readyz")[0] == 200)
    assert metric(base, "spookd_config_reloads_total", result="accepted") == 1
    assert metric(base, "spookd_config_last_good_timestamp_seconds") > 0
    assert metric(base, "spookd_devices", resource="example.com/widget", health="Healthy") == 1
    assert metric(base, "spookd_devices", resource="example.com/widget", health="Unhealthy") == 0
    assert metric(base, "spookd_registrations_total", resource="example.com/widget", result="ok") == 1
    assert metric(base, "spookd_build_info", version=__import__("spookd").__version__) == 1

    node.admit("pod-1", {"app": {"example.com/widget": 1, "example.com/thingamajig": 1}}).raise_for_error()
    assert metric(base, "spookd_allocations_total", resource="example.com/widget") == 1
    assert metric(base, "spookd_allocate_duration_seconds_count", resource="example.com/widget") == 1

    node.restart()
    eventually(lambda: metric(base, "spookd_kubelet_restarts_total") == 1)
    eventually(
        lambda: metric(base, "spookd_registrations_total", resource="example.com/widget", result="ok") == 2
    )
    eventually(lambda: get(f"{base}/readyz")[0] == 200)
    assert get(f"{base}/healthz")[0] == 200

    spookd.write("deviceMapping: 5\n")
    eventually(lambda: metric(base, "spookd_config_reloads_total", result="rejected") == 2)
    assert get(f"{base}/readyz")[0] == 200, "a rejected edit keeps the last good configuration ready"
    assert spookd.stop() == 0


def test_readyz_is_not_ready_while_the_kubelet_is_gone(
    plugin_dir: object, spookd: SpookdProcess, node: NodeHarness
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    spookd.write(WALKTHROUGH)
    spookd.start("--http-addr", f"127.0.0.1:{port}")
    node.wait_for(lambda r: r.is_registered("example.com/widget"), timeout=20)
    eventually(lambda: get(f"{base}/readyz")[0] == 200)
    node.close()  # the kubelet is gone: its streams end and registration fails
    eventually(lambda: get(f"{base}/readyz")[0] == 503)
    assert "not registered" in get(f"{base}/readyz")[1]
    assert get(f"{base}/healthz")[0] == 200
