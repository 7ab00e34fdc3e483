"""Conformance against the kubelet's real device manager (tests/go/cmd/nodeharness).

Spookd runs as a process, exactly as on a node, serving a temporary plugin
directory that the device manager sees as /var/lib/kubelet/device-plugins in its
own mount namespace. Each test fails if Spookd misbehaves towards the real kubelet code.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import tempfile
import time
from pathlib import Path

import anyio
import pytest
import walkthrough
from conftest import SpookdProcess
from support.nodeharness import AdmitResult, NodeHarness, Resources

pytestmark = pytest.mark.harness

WIDGET = "example.com/widget"
THING = "example.com/thingamajig"
POD = {"app": {WIDGET: 1, THING: 1}}

WALKTHROUGH = walkthrough.CONFIG


def widgets(*ids: str) -> str:
    devices = "".join(
        f'      - {{resourceName: example.com/widget, instanceID: "{i}", env: {{IP: ip-{i}}}}}\n' for i in ids
    )
    return f"deviceMapping:\n  - hosts: [minikube]\n    devices:\n{devices}"


def serving(capacities: dict[str, int]) -> functools.partial[bool]:
    return functools.partial(_serving, capacities)


def _serving(capacities: dict[str, int], r: Resources) -> bool:
    return all(
        r.is_registered(name) and r.capacity(name) == n and r.allocatable(name) == n
        for name, n in capacities.items()
    )


def test_every_resource_registers_with_its_device_count(node: NodeHarness, spookd: SpookdProcess) -> None:
    spookd.write(WALKTHROUGH)
    spookd.start()
    resources = node.wait_for(serving({WIDGET: 1, THING: 2}), timeout=20)
    widget = resources[WIDGET]
    assert widget.endpoint == "spookd-examplecom_widget.sock"
    assert widget.options == {"pre_start_required": False, "get_preferred_allocation_available": True}
    assert resources[THING].devices == {"A1234": "Healthy", "B5678": "Healthy"}


def test_quantity_follows_config_edits(node: NodeHarness, spookd: SpookdProcess) -> None:
    spookd.write(widgets("1"))
    spookd.start()
    node.wait_for(serving({WIDGET: 1}), timeout=20)
    spookd.write(widgets("1", "2", "3"))
    node.wait_for(serving({WIDGET: 3}))
    spookd.write(widgets("1", "3"))
    resources = node.wait_for(serving({WIDGET: 2}))
    assert sorted(resources[WIDGET].devices) == ["1", "3"]
    spookd.write(widgets("1", "3").replace("ip-3", "changed"))
    # env changes need no re-registration; the next allocation sees the new value
    pod = {"app": {WIDGET: 2}}
    deadline = time.monotonic() + 5
    while True:
        admitted = node.admit(f"pod-{time.monotonic()}", pod).raise_for_error()
        env = admitted.container("app").envs
        node.remove(admitted.pod)
        if env.get("EXAMPLECOM_WIDGET_DEV1_IP") == "changed" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert env["EXAMPLECOM_WIDGET_DEV1_IP"] == "changed"
    registered = [r for r in spookd.records() if r["message"] == "registered"]
    assert len(registered) == 1, "config edits must not re-register"


def test_walkthrough_allocation_through_the_real_manager(node: NodeHarness, spookd: SpookdProcess) -> None:
    spookd.write(WALKTHROUGH)
    spookd.start()
    node.wait_for(serving({WIDGET: 1, THING: 2}), timeout=20)
    first = node.admit("pod-1", POD, name="spookd-test-1").raise_for_error()
    app = first.container("app")
    assert app.devices[WIDGET] == ["0001"]
    assert app.devices[THING] == ["A1234"], "GetPreferredAllocation answers the lowest ID"
    assert app.envs == walkthrough.ENV
    second = node.admit("pod-2", POD, name="spookd-test-2")
    assert not second.ok
    assert "example.com/widget" in (second.error or "")
    assert node.remove("pod-1")[WIDGET] == ["0001"]
    third = node.admit("pod-3", POD, name="spookd-test-3").raise_for_error()
    assert third.container("app").devices[WIDGET] == ["0001"]


def test_preferred_allocation_is_called_and_honoured(node: NodeHarness, spookd: SpookdProcess) -> None:
    ids = [f"{i:02d}" for i in range(10)]
    spookd.write(widgets(*ids))
    spookd.start()
    node.wait_for(serving({WIDGET: 10}), timeout=20)
    # Without a preference the manager picks from an unordered set; only Spookd's
    # answer makes it take the lowest IDs every time.
    for round_ in range(6):
        admitted = node.admit(f"pod-{round_}", {"app": {WIDGET: 3}}).raise_for_error()
        assert admitted.container("app").devices[WIDGET] == ["00", "01", "02"]
        node.remove(f"pod-{round_}")
    held = node.admit("holder", {"app": {WIDGET: 2}}).raise_for_error()
    assert held.container("app").devices[WIDGET] == ["00", "01"]
    nxt = node.admit("next", {"app": {WIDGET: 2}}).raise_for_error()
    assert nxt.container("app").devices[WIDGET] == ["02", "03"]


def test_removed_resource_drops_to_zero_and_its_socket_goes(
    node: NodeHarness, spookd: SpookdProcess, plugin_dir: Path
) -> None:
    spookd.write(WALKTHROUGH)
    spookd.start()
    node.wait_for(serving({WIDGET: 1, THING: 2}), timeout=20)
    spookd.write(
        WALKTHROUGH.replace(
            "      - {resourceName: example.com/thingamajig, instanceID: A1234}\n", ""
        ).replace("      - {resourceName: example.com/thingamajig, instanceID: B5678}\n", "")
    )
    resources = node.wait_for(lambda r: r.capacity(THING) == 0 and r.allocatable(THING) == 0)
    assert resources.capacity(WIDGET) == 1
    deadline = time.monotonic() + 5
    while (plugin_dir / "spookd-examplecom_thingamajig.sock").exists():
        assert time.monotonic() < deadline, "socket of the removed resource is still there"
        time.sleep(0.05)


def test_kubelet_restarts_twenty_times_without_losing_a_device(
    node: NodeHarness, spookd: SpookdProcess
) -> None:
    spookd.write(WALKTHROUGH)
    spookd.start()
    node.wait_for(serving({WIDGET: 1, THING: 2}), timeout=20)
    node.admit("pod-1", POD).raise_for_error()
    took = []
    for _ in range(20):
        restarted = node.restart()
        assert "spookd-examplecom_widget.sock" in restarted.removed_sockets
        started = time.monotonic()
        node.wait_for(
            lambda r: (
                r.is_registered(WIDGET)
                and r.is_registered(THING)
                and r.capacity(WIDGET) == 1
                and r.capacity(THING) == 2
            ),
            timeout=5,
            interval=0.01,
        )
        took.append(time.monotonic() - started)
        pods = node.pods()
        assert pods["pod-1"]["app"][WIDGET] == ["0001"], "allocation lost across the restart"
    assert max(took) < 1.0, f"re-registration took up to {max(took):.3f}s"
    # the widget is still held by pod-1: a second pod is refused, the free thingamajig is not
    assert not node.admit("pod-2", POD).ok
    assert node.admit("pod-3", {"app": {THING: 1}}).raise_for_error().container("app").devices[THING] == [
        "B5678"
    ]


def test_spookd_restart_keeps_allocations_and_device_ids(node: NodeHarness, spookd: SpookdProcess) -> None:
    spookd.write(WALKTHROUGH)
    spookd.start()
    node.wait_for(serving({WIDGET: 1, THING: 2}), timeout=20)
    node.admit("pod-1", POD).raise_for_error()
    assert spookd.stop() == 0
    node.wait_for(lambda r: r.allocatable(WIDGET) == 0)
    assert node.pods()["pod-1"]["app"][WIDGET] == ["0001"]
    spookd.start()
    resources = node.wait_for(serving({THING: 2}), timeout=20)
    node.wait_for(lambda r: r.is_registered(WIDGET) and r.capacity(WIDGET) == 1)
    assert sorted(resources[THING].devices) == ["A1234", "B5678"]
    assert node.pods()["pod-1"]["app"][WIDGET] == ["0001"]
    assert not node.admit("pod-2", POD).ok, "the held widget must stay held"


def test_sigterm_leaves_the_kubelet_at_zero_devices_and_the_pods_their_devices(
    node: NodeHarness, spookd: SpookdProcess
) -> None:
    """The kubelet keeps a stopped plugin's last device count for 5 minutes: make it 0."""
    spookd.write(WALKTHROUGH)
    spookd.start()
    node.wait_for(serving({WIDGET: 1, THING: 2}), timeout=20)
    node.admit("pod-1", POD).raise_for_error()
    assert spookd.stop() == 0
    resources = node.wait_for(lambda r: r.capacity(WIDGET) == 0 and r.capacity(THING) == 0, timeout=5)
    # still known (the endpoint's grace), at 0 rather than at the count last heard
    assert {WIDGET, THING} <= set(resources.resources), resources
    assert resources.allocatable(WIDGET) == resources.allocatable(THING) == 0
    assert node.pods()["pod-1"]["app"] == {WIDGET: ["0001"], THING: ["A1234"]}
    spookd.start()
    node.wait_for(serving({WIDGET: 1, THING: 2}), timeout=20)
    assert node.pods()["pod-1"]["app"] == {WIDGET: ["0001"], THING: ["A1234"]}


def test_unhealthy_device_is_not_allocatable_until_healthy_again(node: NodeHarness, plugin_dir: Path) -> None:
    from spookd.config import HEALTHY, UNHEALTHY, Device
    from spookd.deviceplugin.server import ResourceServer
    from spookd.naming import assign_socket_names

    devices = [Device(WIDGET, "1"), Device(WIDGET, "2")]
    socket_name = assign_socket_names([WIDGET], str(plugin_dir))[WIDGET]

    async def scenario() -> None:
        server = ResourceServer(WIDGET, devices, plugin_dir, socket_name)
        async with anyio.create_task_group() as tg:
            await tg.start(server.run)
            await anyio.to_thread.run_sync(lambda: node.wait_for(serving({WIDGET: 2}), timeout=10))
            server.update(devices, health={"1": UNHEALTHY, "2": HEALTHY})
            resources = await anyio.to_thread.run_sync(
                lambda: node.wait_for(lambda r: r.allocatable(WIDGET) == 1)
            )
            assert resources[WIDGET].devices == {"1": "Unhealthy", "2": "Healthy"}
            assert resources.capacity(WIDGET) == 2

            # the manager calls back into this event loop: admit from a worker thread
            async def admit(pod: str, containers: dict[str, dict[str, int]]) -> AdmitResult:
                return await anyio.to_thread.run_sync(node.admit, pod, containers)

            first = (await admit("pod-1", {"app": {WIDGET: 1}})).raise_for_error()
            assert first.container("app").devices[WIDGET] == ["2"]
            assert not (await admit("pod-2", {"app": {WIDGET: 1}})).ok
            server.update(devices)
            await anyio.to_thread.run_sync(lambda: node.wait_for(lambda r: r.allocatable(WIDGET) == 2))
            second = (await admit("pod-2", {"app": {WIDGET: 1}})).raise_for_error()
            assert second.container("app").devices[WIDGET] == ["1"]
            tg.cancel_scope.cancel()

    anyio.run(scenario)


def test_stale_socket_and_foreign_file_are_replaced(
    node: NodeHarness, spookd: SpookdProcess, plugin_dir: Path
) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(plugin_dir / "spookd-examplecom_widget.sock"))
    stale.close()  # a socket file nobody listens on, as a crashed Spookd leaves it
    (plugin_dir / "spookd-examplecom_thingamajig.sock").write_text("junk")
    spookd.write(WALKTHROUGH)
    spookd.start()
    node.wait_for(serving({WIDGET: 1, THING: 2}), timeout=20)


def test_directory_in_the_socket_place_is_a_clear_error_not_a_hang(
    node: NodeHarness, spookd: SpookdProcess, plugin_dir: Path
) -> None:
    (plugin_dir / "spookd-examplecom_widget.sock").mkdir()
    spookd.write(WALKTHROUGH)
    spookd.start()
    node.wait_for(serving({THING: 2}), timeout=20)
    deadline = time.monotonic() + 10
    while "is a directory; remove it so Spookd can bind" not in spookd.log_text():
        assert time.monotonic() < deadline, spookd.log_text()
        time.sleep(0.1)
    (plugin_dir / "spookd-examplecom_widget.sock").rmdir()
    node.wait_for(serving({WIDGET: 1, THING: 2}), timeout=10)
    assert spookd.stop() == 0


def test_unwritable_plugin_dir_is_a_clear_error_not_a_hang(
    node: NodeHarness, spookd: SpookdProcess, plugin_dir: Path
) -> None:
    readable = Path(tempfile.mkdtemp(prefix="spk-cfg-"))
    os.chmod(readable, 0o755)
    spookd.config = readable / "config.yaml"
    spookd.write(WALKTHROUGH)
    os.chmod(spookd.config, 0o644)
    os.chmod(plugin_dir, 0o755)
    spookd.start(user="65534")  # nobody: the root-owned plugin directory is not writable
    deadline = time.monotonic() + 20
    while "check that the plugin directory exists and is writable" not in spookd.log_text():
        assert time.monotonic() < deadline, spookd.log_text()
        time.sleep(0.1)
    assert spookd.process is not None
    started = time.monotonic()
    spookd.process.send_signal(signal.SIGTERM)
    assert spookd.process.wait(timeout=5) == 0
    assert time.monotonic() - started < 5


HOST_DEVICES = """\
deviceMapping:
  - hosts: [minikube]
    devices:
      - resourceName: example.com/kvm
        instanceID: kvm0
        deviceNodes: [{hostPath: /dev/kvm}, {hostPath: /dev/vhost-net, containerPath: /dev/net, permissions: rwm}]
        mounts: [{hostPath: /opt/tools, containerPath: /tools, readOnly: true}]
        annotations: {example.com/model: x1}
        cdiDevices: [vendor.com/class=kvm0]
      - resourceName: example.com/kvm
        instanceID: kvm1
        deviceNodes: [{hostPath: /dev/kvm}]
        mounts: [{hostPath: /opt/tools, containerPath: /tools, readOnly: true}]
        annotations: {example.com/model: x2, example.com/slot: "1"}
        cdiDevices: [vendor.com/class=kvm1]
"""


def test_host_devices_reach_the_container_through_the_real_manager(
    node: NodeHarness, spookd: SpookdProcess
) -> None:
    spookd.write(HOST_DEVICES)
    spookd.start()
    node.wait_for(serving({"example.com/kvm": 2}), timeout=20)
    app = node.admit("pod-1", {"app": {"example.com/kvm": 2}}).raise_for_error().container("app")
    assert app.devices["example.com/kvm"] == ["kvm0", "kvm1"]
    assert sorted((d.host_path, d.container_path, d.permissions) for d in app.device_nodes) == [
        ("/dev/kvm", "/dev/kvm", "rw"),
        ("/dev/vhost-net", "/dev/net", "rwm"),
    ]
    assert [(m.host_path, m.container_path, m.read_only) for m in app.mounts] == [
        ("/opt/tools", "/tools", True)
    ]
    assert app.annotations == {"example.com/model": "x1", "example.com/slot": "1"}
    assert sorted(app.cdi_devices) == ["vendor.com/class=kvm0", "vendor.com/class=kvm1"]
    assert app.envs["EXAMPLECOM_KVM_NUM_DEVICES"] == "2"


def test_a_resource_removed_and_added_back_quickly_is_always_served_again(
    node: NodeHarness, spookd: SpookdProcess, plugin_dir: Path
) -> None:
    # The kubelet refuses a Register on a socket path whose old stream it has not torn
    # down yet ("already connected") and then forgets the old client, so that path stays
    # refused until it restarts; Spookd must still get the resource served.
    both = WALKTHROUGH
    widget_only = "".join(line for line in WALKTHROUGH.splitlines(keepends=True) if "thingamajig" not in line)
    spookd.write(both)
    spookd.start()
    node.wait_for(serving({WIDGET: 1, THING: 2}), timeout=20)
    for _ in range(30):
        spookd.write(widget_only)
        node.wait_for(lambda r: r.capacity(THING) == 0, timeout=10)
        spookd.write(both)
        node.wait_for(serving({WIDGET: 1, THING: 2}), timeout=10)
    admitted = node.admit("pod-1", POD).raise_for_error()
    assert admitted.container("app").devices[THING] == ["A1234"]
    # a socket the kubelet refused is not left behind
    sockets = sorted(p.name for p in plugin_dir.glob("spookd-*"))
    assert len(sockets) == 2, sockets
    # each re-added server starts on a name the kubelet has never seen: never refused
    refused = [r for r in spookd.records() if "already connected" in r["message"]]
    assert not refused, refused[:3]


def test_fast_reloads_leak_no_connections(node: NodeHarness, spookd: SpookdProcess) -> None:
    # Every reload stops or starts the thingamajig server without waiting for the
    # kubelet; the kubelet keeps its connections to a stopped plugin open, so
    # Spookd must close them itself.
    widget_only = "".join(line for line in WALKTHROUGH.splitlines(keepends=True) if "thingamajig" not in line)
    spookd.write(WALKTHROUGH)
    spookd.start()
    node.wait_for(serving({WIDGET: 1, THING: 2}), timeout=20)
    time.sleep(0.5)
    before = spookd.open_fds()
    for i in range(200):
        applied = sum(r["message"] == "config applied" for r in spookd.records())
        spookd.write(widget_only if i % 2 == 0 else WALKTHROUGH)
        deadline = time.monotonic() + 10
        while sum(r["message"] == "config applied" for r in spookd.records()) == applied:
            assert time.monotonic() < deadline, "reload not applied"
            time.sleep(0.005)
    node.wait_for(serving({WIDGET: 1, THING: 2}), timeout=10)
    time.sleep(1)
    after = spookd.open_fds()
    assert after <= before + 5, f"open descriptors grew from {before} to {after} over 200 reloads"
