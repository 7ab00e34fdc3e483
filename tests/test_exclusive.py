"""Cross-host exclusive devices (SPEC §10): several real device managers, one real API server.

Each node is a node harness (the kubelet's device manager and its PodResources API,
in its own mount namespace) with its own Spookd process; the Leases live in a real
kube-apiserver. Timings are shortened through SPOOKD_LEASE_DURATION and friends.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import SpookdProcess
from support.apiserver import ApiClient, ApiServer
from support.nodeharness import AdmitResult, NodeHarness, Resources

from spookd.kube.leaserecords import lease_name

pytestmark = [pytest.mark.apiserver, pytest.mark.harness]

OSC = "skao.int/oscilloscope"
TIMINGS = {"SPOOKD_LEASE_DURATION": "3", "SPOOKD_CLAIM_GRACE": "0.5", "SPOOKD_CLAIM_POLL": "0.2"}
_namespaces = itertools.count()


def config(nodes: list[str], shared: list[str]) -> str:
    devices = "".join(
        f'      - {{resourceName: {OSC}, instanceID: "{i}", env: {{IP: 10.0.10.{n}}}}}\n'
        for n, i in enumerate(shared)
    )
    return f"exclusive: true\ndeviceMapping:\n  - hosts: [{', '.join(nodes)}]\n    devices:\n{devices}"


@dataclass
class Node:
    name: str
    harness: NodeHarness
    spookd: SpookdProcess
    workdir: Path
    #: Extra environment for this node's Spookd (libfaketime, for one).
    env: dict[str, str] = field(default_factory=dict)
    #: This node's way to the API server, when not the API server's own kubeconfig.
    kubeconfig: Path | None = None

    def health(self) -> dict[str, str]:
        state = self.harness.resources().get(OSC)
        return dict(state.devices) if state is not None else {}


class Cluster:
    def __init__(self, apiserver: ApiServer, timings: dict[str, str] | None = None) -> None:
        self.apiserver = apiserver
        self.timings = timings or TIMINGS
        self.api: ApiClient = apiserver.client()
        self.namespace = f"claims-{next(_namespaces)}-{int(time.time() * 1000) % 100000}"
        self.api.ensure({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}})
        self.nodes: list[Node] = []

    def add(
        self, name: str, text: str, env: dict[str, str] | None = None, kubeconfig: Path | None = None
    ) -> Node:
        workdir = Path(tempfile.mkdtemp(prefix=f"spk-{name}-", dir="/tmp"))
        plugin_dir = workdir / "p"
        plugin_dir.mkdir()
        socket = workdir / "podres.sock"
        harness = NodeHarness(log_dir=workdir, pod_resources_socket=socket)
        harness.start(plugin_dir)
        spookd = SpookdProcess(plugin_dir, workdir, node_name=name)
        spookd.write(text)
        node = Node(name, harness, spookd, workdir, env or {}, kubeconfig)
        self.nodes.append(node)
        self.start(node)
        return node

    def start(self, node: Node) -> None:
        node.spookd.start(
            "--lease-namespace",
            self.namespace,
            "--pod-resources-socket",
            str(node.workdir / "podres.sock"),
            kubeconfig=node.kubeconfig or self.apiserver.kubeconfig,
            env={**self.timings, **node.env},
        )

    def lease(self, device: str) -> dict[str, Any] | None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{lease_name(OSC, device)}"
        answer = self.api.request("GET", path)
        return answer.json if answer.status == 200 else None

    def holder(self, device: str) -> str:
        lease = self.lease(device)
        return (lease or {}).get("spec", {}).get("holderIdentity") or ""

    def close(self) -> None:
        for node in self.nodes:
            if node.spookd.process is not None and node.spookd.process.poll() is None:
                node.spookd.process.send_signal(signal.SIGCONT)
                node.spookd.stop()
            node.harness.close()
            shutil.rmtree(node.workdir, ignore_errors=True)


@pytest.fixture
def cluster(apiserver: ApiServer) -> Iterator[Cluster]:
    made = Cluster(apiserver)
    try:
        yield made
    finally:
        made.close()


def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"{what} not reached within {timeout}s"
        time.sleep(0.02)
    return time.monotonic() - started


def shows(node: Node, device: str, health: str) -> Callable[[], bool]:
    return lambda: node.health().get(device) == health


def serving(n: int) -> Callable[[Resources], bool]:
    return lambda r: r.is_registered(OSC) and r.capacity(OSC) == n


def test_a_held_device_is_unhealthy_elsewhere_and_healthy_again_when_freed(cluster: Cluster) -> None:
    names = ["node-a", "node-b", "node-c"]
    text = config(names, ["0001", "0002"])
    a, b, c = (cluster.add(name, text) for name in names)
    for node in (a, b, c):
        node.harness.wait_for(serving(2), timeout=20)
        eventually(shows(node, "0001", "Healthy"), what=f"{node.name} healthy")
        eventually(shows(node, "0002", "Healthy"), what=f"{node.name} healthy")

    admitted = a.harness.admit("pod-1", {"app": {OSC: 1}}).raise_for_error()
    assert admitted.container("app").devices[OSC] == ["0001"]
    assert cluster.holder("0001") == "node-a"
    took = max(eventually(shows(node, "0001", "Unhealthy"), timeout=3) for node in (b, c))
    assert took < 1.0, f"other nodes saw the claim after {took:.2f}s"
    assert a.health()["0001"] == "Healthy"
    assert b.health()["0002"] == "Healthy"
    # the next pod elsewhere gets the other device
    second = b.harness.admit("pod-2", {"app": {OSC: 1}}).raise_for_error()
    assert second.container("app").devices[OSC] == ["0002"]
    assert not c.harness.admit("pod-3", {"app": {OSC: 1}}).ok, "both devices are held"

    a.harness.remove("pod-1")
    for node in (b, c):
        eventually(shows(node, "0001", "Healthy"), timeout=5, what="released")
    assert cluster.lease("0001") is None
    third = c.harness.admit("pod-3", {"app": {OSC: 1}}).raise_for_error()
    assert third.container("app").devices[OSC] == ["0001"]
    assert cluster.holder("0001") == "node-c"


def test_a_race_never_makes_two_holders(cluster: Cluster) -> None:
    text = config(["node-a", "node-b"], ["0001"])
    a, b = cluster.add("node-a", text), cluster.add("node-b", text)
    for node in (a, b):
        node.harness.wait_for(serving(1), timeout=20)
    wins = {"node-a": 0, "node-b": 0}
    refusals = {"spookd": 0, "kubelet": 0}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for round_ in range(100):
            for node in (a, b):
                eventually(shows(node, "0001", "Healthy"), timeout=10, what="free again")
            pod = f"pod-{round_}"
            futures = [pool.submit(node.harness.admit, pod, {"app": {OSC: 1}}) for node in (a, b)]
            results: list[tuple[Node, AdmitResult]] = [
                (node, future.result()) for node, future in zip((a, b), futures, strict=True)
            ]
            winners = [node for node, result in results if result.ok]
            assert len(winners) <= 1, f"round {round_}: two holders"
            assert winners, f"round {round_}: nobody got the free device: {[r.error for _, r in results]}"
            winner = winners[0]
            wins[winner.name] += 1
            (_, loser) = next((n, r) for n, r in results if not r.ok)
            assert loser.error is not None
            # Either Spookd refused the claim (the two Allocates raced), or the claim had
            # already made the device Unhealthy there and the kubelet itself refused.
            if "is exclusive and" in loser.error:
                refusals["spookd"] += 1
                assert "holds it" in loser.error or "at the same moment" in loser.error, loser.error
            else:
                refusals["kubelet"] += 1
                assert "no healthy devices present" in loser.error, loser.error
            assert cluster.holder("0001") == winner.name
            winner.harness.remove(pod)
    assert sum(wins.values()) == 100
    print(f"wins {wins}, refusals {refusals}")


def test_a_dead_holders_claim_expires_and_a_returning_holder_does_not_steal(cluster: Cluster) -> None:
    text = config(["node-a", "node-b"], ["0001"])
    a, b = cluster.add("node-a", text), cluster.add("node-b", text)
    for node in (a, b):
        node.harness.wait_for(serving(1), timeout=20)
    a.harness.admit("pod-1", {"app": {OSC: 1}}).raise_for_error()
    eventually(lambda: b.health().get("0001") == "Unhealthy", timeout=3)

    assert a.spookd.process is not None
    a.spookd.process.send_signal(signal.SIGSTOP)  # a partition: no renewals, no goodbye
    eventually(lambda: b.health().get("0001") == "Healthy", timeout=10, what="expiry of the dead claim")
    b.harness.admit("pod-2", {"app": {OSC: 1}}).raise_for_error()
    assert cluster.holder("0001") == "node-b"

    a.spookd.process.send_signal(signal.SIGCONT)
    eventually(lambda: "lost the claim" in a.spookd.log_text(), timeout=10, what="the old holder noticing")
    time.sleep(2)
    assert cluster.holder("0001") == "node-b", "the returning holder took the device back"
    eventually(lambda: a.health().get("0001") == "Unhealthy", timeout=3)


def test_spookd_restart_on_the_holder_keeps_the_claim(cluster: Cluster) -> None:
    text = config(["node-a", "node-b"], ["0001"])
    a, b = cluster.add("node-a", text), cluster.add("node-b", text)
    for node in (a, b):
        node.harness.wait_for(serving(1), timeout=20)
    a.harness.admit("pod-1", {"app": {OSC: 1}}).raise_for_error()
    lease = cluster.lease("0001")
    assert lease is not None
    uid = lease["metadata"]["uid"]
    assert a.spookd.stop() == 0
    cluster.start(a)
    a.harness.wait_for(serving(1), timeout=20)
    time.sleep(3)  # longer than the Lease duration: the restarted Spookd must renew it
    lease = cluster.lease("0001")
    assert lease is not None
    assert lease["metadata"]["uid"] == uid, "the claim was released and taken again"
    assert lease["spec"]["holderIdentity"] == "node-a"
    assert b.health().get("0001") == "Unhealthy"
    assert not b.harness.admit("pod-2", {"app": {OSC: 1}}).ok


def test_a_killed_holders_claim_expires_and_another_node_takes_the_device(cluster: Cluster) -> None:
    text = config(["node-a", "node-b"], ["0001"])
    a, b = cluster.add("node-a", text), cluster.add("node-b", text)
    for node in (a, b):
        node.harness.wait_for(serving(1), timeout=20)
    a.harness.admit("pod-1", {"app": {OSC: 1}}).raise_for_error()
    eventually(shows(b, "0001", "Unhealthy"), timeout=3)
    assert a.spookd.process is not None
    a.spookd.process.kill()  # no cleanup at all: the Lease stays until it expires
    a.spookd.process.wait()
    assert cluster.holder("0001") == "node-a"
    took = eventually(shows(b, "0001", "Healthy"), timeout=10, what="expiry")
    assert took <= 3 + 1, f"the dead claim blocked the device for {took:.1f}s after a 3 s Lease"
    b.harness.admit("pod-2", {"app": {OSC: 1}}).raise_for_error()
    assert cluster.holder("0001") == "node-b"
