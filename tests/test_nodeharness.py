"""Proves the node harness (the kubelet's real device manager) with the kubelet's own
stub device plugin (tests/go/cmd/goplugin), and its PodResources API with
tests/go/cmd/podresources-list."""

from __future__ import annotations

import json
import logging
import pathlib
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
from support import gobuild
from support.nodeharness import GoPlugin, NodeHarness

WIDGET = "example.com/widget"

log = logging.getLogger(__name__)

pytestmark = pytest.mark.harness


@pytest.fixture(scope="module")
def binaries() -> tuple[pathlib.Path, pathlib.Path]:
    return gobuild.build("nodeharness"), gobuild.build("goplugin")


@pytest.fixture
def plugin_dir() -> Iterator[pathlib.Path]:
    # Short path: Unix socket paths are limited to 107 bytes.
    d = pathlib.Path(tempfile.mkdtemp(prefix="dp-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def harness(
    plugin_dir: pathlib.Path, binaries: tuple[pathlib.Path, pathlib.Path], tmp_path: pathlib.Path
) -> Iterator[NodeHarness]:
    h = NodeHarness(binaries[0], log_dir=tmp_path)
    h.start(plugin_dir)
    log.info("nodeharness ready in %.3fs", h.start_seconds)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def plugins() -> Iterator[list[GoPlugin]]:
    """Go plugins started by a test; stopped afterwards."""
    started: list[GoPlugin] = []
    yield started
    for p in started:
        p.stop()


def start_plugin(
    started: list[GoPlugin],
    plugin_dir: pathlib.Path,
    binary: pathlib.Path,
    log_dir: pathlib.Path,
    **kwargs: object,
) -> GoPlugin:
    p = GoPlugin(plugin_dir, binary=binary, log_dir=log_dir, **kwargs)  # type: ignore[arg-type]
    started.append(p)
    return p.start()


@pytest.fixture
def widget3(
    harness: NodeHarness,
    plugins: list[GoPlugin],
    plugin_dir: pathlib.Path,
    binaries: tuple[pathlib.Path, pathlib.Path],
    tmp_path: pathlib.Path,
) -> GoPlugin:
    """goplugin with 3 widgets, registered and visible to the harness."""
    p = start_plugin(plugins, plugin_dir, binaries[1], tmp_path, resource=WIDGET, n=3)
    harness.wait_for(lambda r: r.allocatable(WIDGET) == 3)
    return p


def test_ready_and_kubelet_socket_in_plugin_dir(harness: NodeHarness, plugin_dir: pathlib.Path) -> None:
    assert harness.ready_info["socket"] == "/var/lib/kubelet/device-plugins/kubelet.sock"
    assert (plugin_dir / "kubelet.sock").is_socket()
    assert harness.resources().resources == {}


def test_goplugin_registers_and_capacity_is_n(harness: NodeHarness, widget3: GoPlugin) -> None:
    res = harness.resources()
    w = res[WIDGET]
    assert (w.capacity, w.allocatable) == (3, 3)
    assert w.devices == {"dev-0": "Healthy", "dev-1": "Healthy", "dev-2": "Healthy"}
    assert w.registered
    assert res.registered == [WIDGET]
    assert w.endpoint == "goplugin.sock"
    assert w.options == {"pre_start_required": False, "get_preferred_allocation_available": False}
    assert w.allocated == []


def test_admit_one_device(harness: NodeHarness, widget3: GoPlugin) -> None:
    res = harness.admit("uid-a", {"c0": {WIDGET: 1}}, name="a").raise_for_error()
    c0 = res.container("c0")
    ids = c0.devices[WIDGET]
    assert len(ids) == 1
    assert ids[0] in widget3.devices
    # the Allocate response of the stub plugin ends up in the run-container options
    assert c0.envs == {"GOPLUGIN_DEVICES": ids[0], "GOPLUGIN_RESOURCE": WIDGET}
    assert c0.mounts == []
    assert c0.device_nodes == []
    assert c0.cdi_devices == []
    assert harness.resources()[WIDGET].allocated == ids
    assert harness.pods() == {"uid-a": {"c0": {WIDGET: ids}}}


def test_two_containers_get_distinct_devices(harness: NodeHarness, widget3: GoPlugin) -> None:
    res = harness.admit("uid-a", {"c0": {WIDGET: 1}, "c1": {WIDGET: 2}}).raise_for_error()
    a, b = res.container("c0").devices[WIDGET], res.container("c1").devices[WIDGET]
    assert len(a) == 1
    assert len(b) == 2
    assert sorted(a + b) == widget3.devices
    assert res.container("c1").envs["GOPLUGIN_DEVICES"] == ",".join(b)


def test_admit_beyond_capacity_fails(harness: NodeHarness, widget3: GoPlugin) -> None:
    res = harness.admit("uid-big", {"c0": {WIDGET: 4}})
    assert not res.ok
    assert res.stage == "admit"
    assert res.error == (
        "requested number of devices unavailable for example.com/widget. Requested: 4, Available: 3"
    )
    assert res.reason == "UnexpectedAdmissionError"
    assert harness.pods() == {}  # a rejected pod is not active

    harness.admit("uid-a", {"c0": {WIDGET: 2}}).raise_for_error()
    res = harness.admit("uid-b", {"c0": {WIDGET: 2}})
    assert not res.ok
    assert res.error is not None
    assert "Requested: 2, Available: 1" in res.error


def test_remove_frees_devices(harness: NodeHarness, widget3: GoPlugin) -> None:
    ids = harness.admit("uid-a", {"c0": {WIDGET: 3}}).raise_for_error().container("c0").devices[WIDGET]
    assert not harness.admit("uid-b", {"c0": {WIDGET: 1}}).ok
    assert harness.remove("uid-a") == {WIDGET: ids}
    assert harness.resources()[WIDGET].allocated == []
    again = harness.admit("uid-b", {"c0": {WIDGET: 3}}).raise_for_error()
    assert again.container("c0").devices[WIDGET] == widget3.devices


def test_resource_without_plugin_is_ignored(harness: NodeHarness, widget3: GoPlugin) -> None:
    # What the real device manager does: a resource no plugin ever registered is not a
    # device-plugin resource, so Allocate skips it (the scheduler would have refused the pod).
    res = harness.admit("uid-x", {"c0": {"example.com/nothing": 1}}).raise_for_error()
    assert res.container("c0").devices == {}


def test_concurrent_registration_of_two_plugins(
    harness: NodeHarness,
    plugins: list[GoPlugin],
    plugin_dir: pathlib.Path,
    binaries: tuple[pathlib.Path, pathlib.Path],
    tmp_path: pathlib.Path,
) -> None:
    # Both processes start at once; the manager dials back to each during Register.
    a = GoPlugin(plugin_dir, "example.com/a", 2, socket="a.sock", binary=binaries[1], log_dir=tmp_path)
    b = GoPlugin(plugin_dir, "example.com/b", 5, socket="b.sock", binary=binaries[1], log_dir=tmp_path)
    plugins.extend([a, b])

    errors: list[BaseException] = []

    def run(p: GoPlugin) -> None:
        try:
            p.start()
        except BaseException as e:  # pragma: no cover - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(p,)) for p in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    res = harness.wait_for(lambda r: r.capacity("example.com/a") == 2 and r.capacity("example.com/b") == 5)
    assert res.registered == ["example.com/a", "example.com/b"]
    pod = harness.admit("uid-ab", {"c0": {"example.com/a": 1, "example.com/b": 2}}).raise_for_error()
    assert {k: len(v) for k, v in pod.container("c0").devices.items()} == {
        "example.com/a": 1,
        "example.com/b": 2,
    }


def test_preferred_allocation_is_used(
    harness: NodeHarness,
    plugins: list[GoPlugin],
    plugin_dir: pathlib.Path,
    binaries: tuple[pathlib.Path, pathlib.Path],
    tmp_path: pathlib.Path,
) -> None:
    start_plugin(plugins, plugin_dir, binaries[1], tmp_path, resource=WIDGET, n=4, preferred=True)
    res = harness.wait_for(lambda r: r.allocatable(WIDGET) == 4)
    assert res[WIDGET].options == {
        "pre_start_required": False,
        "get_preferred_allocation_available": True,
    }
    # The manager calls GetPreferredAllocation inside Allocate; the plugin prefers the
    # lowest-sorted IDs, so allocations come out in order.
    got = [
        harness.admit(f"uid-{i}", {"c0": {WIDGET: 1}}).raise_for_error().container("c0").devices[WIDGET]
        for i in range(3)
    ]
    assert got == [["dev-0"], ["dev-1"], ["dev-2"]]
    assert "GetPreferredAllocation" in plugins[0].stderr_text


def test_plugin_exit_marks_devices_unhealthy(
    harness: NodeHarness, widget3: GoPlugin, plugin_dir: pathlib.Path
) -> None:
    assert widget3.stop() == 0
    assert not (plugin_dir / "goplugin.sock").exists()
    res = harness.wait_for(lambda r: not r[WIDGET].registered)
    w = res[WIDGET]
    # within the 5-minute grace period the manager keeps the resource, all Unhealthy
    assert (w.capacity, w.allocatable) == (3, 0)
    assert w.unhealthy == ["dev-0", "dev-1", "dev-2"]
    res2 = harness.admit("uid-a", {"c0": {WIDGET: 1}})
    assert not res2.ok
    assert res2.error == "no healthy devices present; cannot allocate unhealthy devices example.com/widget"


def test_restart_deletes_sockets_and_checkpoint_keeps_allocation(
    harness: NodeHarness, widget3: GoPlugin, plugin_dir: pathlib.Path
) -> None:
    ids = harness.admit("uid-a", {"c0": {WIDGET: 1}}).raise_for_error().container("c0").devices[WIDGET]
    cp = harness.checkpoint()
    assert cp is not None
    entries = cp["Data"]["PodDeviceEntries"]
    assert [(e["PodUID"], e["ContainerName"], e["ResourceName"]) for e in entries] == [
        ("uid-a", "c0", WIDGET)
    ]

    started = time.monotonic()
    rr = harness.restart()
    log.info("restart took %.3fs", time.monotonic() - started)
    # The new manager's Start deleted every socket but its own new kubelet.sock.
    assert "goplugin.sock" in rr.removed_sockets
    assert not (plugin_dir / "goplugin.sock").exists()
    assert (plugin_dir / "kubelet.sock").is_socket()
    # ...and read the checkpoint: the active pod keeps its device.
    assert rr.pods == {"uid-a": {"c0": {WIDGET: ids}}}
    res = harness.resources()
    w = res[WIDGET]
    # Until the plugin re-registers: resource known from the checkpoint, no devices,
    # placeholder (stopped) endpoint, the allocation still counted.
    assert (w.registered, w.capacity, w.allocatable, w.devices) == (False, 0, 0, {})
    assert w.allocated == ids

    # The stub's Watch loop sees the new kubelet.sock, waits its fixed 10 s poll
    # interval, restarts its server and re-registers.
    res = harness.wait_for(lambda r: r[WIDGET].registered and r.allocatable(WIDGET) == 3, timeout=30)
    assert (plugin_dir / "goplugin.sock").is_socket()
    assert res[WIDGET].allocated == ids
    # The checkpointed allocation still blocks its device.
    over = harness.admit("uid-b", {"c0": {WIDGET: 3}})
    assert over.error == f"requested number of devices unavailable for {WIDGET}. Requested: 3, Available: 2"
    # Re-admitting the same pod (what a restarted kubelet does) keeps its devices.
    again = harness.admit("uid-a", {"c0": {WIDGET: 1}}).raise_for_error()
    assert again.container("c0").devices[WIDGET] == ids
    assert harness.remove("uid-a") == {WIDGET: ids}


def test_restart_forgets_allocations_of_removed_pods(harness: NodeHarness, widget3: GoPlugin) -> None:
    harness.admit("uid-a", {"c0": {WIDGET: 2}}).raise_for_error()
    harness.remove("uid-a")
    # UpdateAllocatedDevices does not rewrite the checkpoint, so the removed pod is still
    # in it; the restarted manager counts its devices until the next cleanup runs.
    rr = harness.restart()
    assert rr.pods == {}
    assert len(harness.resources()[WIDGET].allocated) == 2
    harness.wait_for(lambda r: r.allocatable(WIDGET) == 3, timeout=30)
    # Allocate runs UpdateAllocatedDevices first, which frees the stale entries.
    harness.admit("uid-b", {"c0": {WIDGET: 3}}).raise_for_error()


# ---------------------------------------------------------------- PodResources API


def podresources(socket: pathlib.Path, method: str = "list", *args: str) -> dict[str, Any]:
    """Call the PodResources v1 API with tests/go/cmd/podresources-list; the response as JSON."""
    proc = subprocess.run(
        [str(gobuild.build("podresources-list")), f"-socket={socket}", f"-method={method}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, f"podresources-list {method} failed: {proc.stderr}"
    return cast(dict[str, Any], json.loads(proc.stdout))


def listed_devices(resp: dict[str, Any]) -> dict[tuple[str, str], dict[str, dict[str, list[str]]]]:
    """List response -> (namespace, name) -> container -> resource -> sorted device IDs."""
    out: dict[tuple[str, str], dict[str, dict[str, list[str]]]] = {}
    for pod in resp["pod_resources"]:
        containers: dict[str, dict[str, list[str]]] = {}
        for c in pod["containers"]:
            devs: dict[str, list[str]] = {}
            for d in c["devices"]:
                devs.setdefault(d["resource_name"], []).extend(d["device_ids"])
            containers[c["name"]] = {r: sorted(ids) for r, ids in devs.items()}
        out[(pod["namespace"], pod["name"])] = containers
    return out


@pytest.fixture
def pr_socket() -> Iterator[pathlib.Path]:
    d = pathlib.Path(tempfile.mkdtemp(prefix="pr-", dir="/tmp"))
    yield d / "pod-resources.sock"
    shutil.rmtree(d, ignore_errors=True)


def test_pod_resources_list_follows_admit_remove_and_restart(
    plugin_dir: pathlib.Path,
    pr_socket: pathlib.Path,
    binaries: tuple[pathlib.Path, pathlib.Path],
    plugins: list[GoPlugin],
    tmp_path: pathlib.Path,
) -> None:
    with NodeHarness(binaries[0], log_dir=tmp_path, pod_resources_socket=pr_socket) as h:
        h.start(plugin_dir)
        assert h.ready_info["pod_resources_socket"] == str(pr_socket)
        assert pr_socket.is_socket()
        assert podresources(pr_socket) == {"pod_resources": []}

        start_plugin(plugins, plugin_dir, binaries[1], tmp_path, resource=WIDGET, n=3)
        h.wait_for(lambda r: r.allocatable(WIDGET) == 3)
        alloc = podresources(pr_socket, "allocatable")
        assert sorted(i for d in alloc["devices"] for i in d["device_ids"]) == ["dev-0", "dev-1", "dev-2"]
        assert {d["resource_name"] for d in alloc["devices"]} == {WIDGET}

        a = h.admit("uid-a", {"c0": {WIDGET: 2}}, name="alpha", namespace="team-a").raise_for_error()
        a_ids = a.container("c0").devices[WIDGET]
        b = h.admit("uid-b", {"main": {WIDGET: 1}}, name="beta").raise_for_error()
        b_ids = b.container("main").devices[WIDGET]
        assert len(a_ids) == 2
        assert sorted(a_ids + b_ids) == ["dev-0", "dev-1", "dev-2"]

        listed = podresources(pr_socket)
        assert listed_devices(listed) == {
            ("team-a", "alpha"): {"c0": {WIDGET: a_ids}},
            ("default", "beta"): {"main": {WIDGET: b_ids}},
        }
        # The kubelet's shape: one ContainerDevices per device; no CPUs, memory or DRA here.
        alpha = next(p for p in listed["pod_resources"] if p["name"] == "alpha")
        assert [len(d["device_ids"]) for d in alpha["containers"][0]["devices"]] == [1, 1]
        assert alpha["containers"][0]["cpu_ids"] == []
        assert alpha["containers"][0]["dynamic_resources"] == []
        got = podresources(pr_socket, "get", "-pod=alpha", "-namespace=team-a")
        assert listed_devices({"pod_resources": [got["pod_resources"]]}) == {
            ("team-a", "alpha"): {"c0": {WIDGET: a_ids}}
        }

        # The pod is gone: List no longer shows it or its devices.
        assert h.remove("uid-a") == {WIDGET: a_ids}
        after = listed_devices(podresources(pr_socket))
        assert after == {("default", "beta"): {"main": {WIDGET: b_ids}}}

        # Kubelet restart: the same socket answers, from the new manager (checkpoint).
        h.restart()
        assert pr_socket.is_socket()
        assert listed_devices(podresources(pr_socket)) == after
        # Until the plugin re-registers the new manager knows no allocatable devices.
        assert podresources(pr_socket, "allocatable")["devices"] == []
        h.wait_for(lambda r: r[WIDGET].registered and r.allocatable(WIDGET) == 3, timeout=30)
        assert len(podresources(pr_socket, "allocatable")["devices"]) == 3
        c = h.admit("uid-c", {"c0": {WIDGET: 2}}, name="gamma").raise_for_error()
        assert listed_devices(podresources(pr_socket)) == {
            ("default", "beta"): {"main": {WIDGET: b_ids}},
            ("default", "gamma"): {"c0": {WIDGET: c.container("c0").devices[WIDGET]}},
        }
    # Closing the harness removes its socket.
    assert not pr_socket.exists()
