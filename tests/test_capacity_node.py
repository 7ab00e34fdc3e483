"""``capacity: N`` against the kubelet's real device manager, and across nodes through a real API server.

One node: Spookd as a process and the device manager of tests/go/cmd/nodeharness (see
test_conformance.py). Several nodes: the pattern of test_exclusive.py, one harness and one
Spookd per node, the seats' Leases in a real kube-apiserver.
"""

from __future__ import annotations

import collections
import concurrent.futures
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import SpookdProcess
from support.apiserver import ApiServer
from support.nodeharness import AdmitResult, NodeHarness, Resources
from test_exclusive import Cluster, Node, eventually

from spookd.kube.leaserecords import lease_name

LIC = "example.com/licence"
PREFIX = "EXAMPLECOM_LICENCE"
ONE = {"app": {LIC: 1}}


def licences(*devices: tuple[str, int], extra: str = "", hosts: str = "[minikube]", top: str = "") -> str:
    lines = "".join(
        f'      - {{resourceName: {LIC}, instanceID: "{i}", capacity: {n}, env: {{SERVER: lic-{i}}}{extra}}}\n'
        for i, n in devices
    )
    return f"{top}deviceMapping:\n  - hosts: {hosts}\n    devices:\n{lines}"


def serving(n: int, healthy: int | None = None) -> Callable[[Resources], bool]:
    def check(r: Resources) -> bool:
        return (
            r.is_registered(LIC)
            and r.capacity(LIC) == n
            and r.allocatable(LIC) == (n if healthy is None else healthy)
        )

    return check


@pytest.mark.harness
def test_n_holders_are_admitted_the_next_refused_and_a_freed_seat_reused(
    node: NodeHarness, spookd: SpookdProcess
) -> None:
    spookd.write(licences(("0007", 3)))
    spookd.start()
    resources = node.wait_for(serving(3), timeout=20)
    assert resources[LIC].devices == {"0007": "Healthy", "0007::2": "Healthy", "0007::3": "Healthy"}

    seats = []
    for n in range(3):
        admitted = node.admit(f"pod-{n}", ONE).raise_for_error()
        app = admitted.container("app")
        (seat,) = app.devices[LIC]
        seats.append(seat)
        # the environment is the device's, exactly as with capacity 1
        assert app.envs == {
            f"{PREFIX}_DEV0_ID": "0007",
            f"{PREFIX}_DEV0_SERVER": "lic-0007",
            f"{PREFIX}_DEV0_TYPE": LIC,
            f"{PREFIX}_ID": "0007",
            f"{PREFIX}_SERVER": "lic-0007",
            f"{PREFIX}_TYPE": LIC,
            f"{PREFIX}_NUM_DEVICES": "1",
        }
    assert seats == ["0007", "0007::2", "0007::3"]

    refused = node.admit("pod-3", ONE)
    assert not refused.ok
    assert LIC in (refused.error or ""), refused.error

    assert node.remove("pod-1")[LIC] == ["0007::2"]
    again = node.admit("pod-4", ONE).raise_for_error()
    assert again.container("app").devices[LIC] == ["0007::2"]
    assert not node.admit("pod-5", ONE).ok


@pytest.mark.harness
def test_seats_spread_over_distinct_devices_first(node: NodeHarness, spookd: SpookdProcess) -> None:
    spookd.write(licences(("a", 2), ("b", 2), ("c", 2)))
    spookd.start()
    node.wait_for(serving(6), timeout=20)
    got = [node.admit(f"pod-{n}", ONE).raise_for_error().container("app").devices[LIC][0] for n in range(4)]
    assert got == ["a", "b", "c", "a::2"], "every device gets a holder before any gets a second"
    node.remove("pod-1")  # b is emptiest now
    assert node.admit("pod-4", ONE).raise_for_error().container("app").devices[LIC] == ["b"]
    # a container asking for two gets two devices, not two seats of one
    node.remove("pod-0")
    node.remove("pod-3")
    pair = node.admit("pair", {"app": {LIC: 2}}).raise_for_error().container("app")
    # (a is emptiest; then every device has one seat taken, and the container has a already)
    assert pair.devices[LIC] == ["a", "b::2"]
    assert pair.envs[f"{PREFIX}_NUM_DEVICES"] == "2"
    assert (pair.envs[f"{PREFIX}_DEV0_ID"], pair.envs[f"{PREFIX}_DEV1_ID"]) == ("a", "b")


@pytest.mark.harness
def test_a_device_health_applies_to_every_seat(
    node: NodeHarness, spookd: SpookdProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "online"
    marker.touch()
    spookd.write(licences(("0007", 3), extra=f", healthCheck: {{path: {marker}, interval: 100ms}}"))
    spookd.start()
    node.wait_for(serving(3, healthy=3), timeout=20)
    held = node.admit("pod-0", ONE).raise_for_error()
    marker.unlink()
    resources = node.wait_for(serving(3, healthy=0), timeout=10)
    assert set(resources[LIC].devices.values()) == {"Unhealthy"}
    assert not node.admit("pod-1", ONE).ok
    marker.touch()
    node.wait_for(serving(3, healthy=3), timeout=10)
    assert (
        node.admit("pod-2", ONE).raise_for_error().container("app").devices[LIC]
        != held.container("app").devices[LIC]
    )


@pytest.mark.harness
def test_raising_the_capacity_keeps_the_running_seat_and_adds_seats(
    node: NodeHarness, spookd: SpookdProcess
) -> None:
    spookd.write(licences(("0007", 1)))
    spookd.start()
    node.wait_for(serving(1), timeout=20)
    assert node.admit("pod-0", ONE).raise_for_error().container("app").devices[LIC] == ["0007"]
    spookd.write(licences(("0007", 2)))
    node.wait_for(lambda r: serving(2)(r) or (r.is_registered(LIC) and r.capacity(LIC) == 2), timeout=10)
    assert node.admit("pod-1", ONE).raise_for_error().container("app").devices[LIC] == ["0007::2"]
    assert not node.admit("pod-2", ONE).ok
    assert node.pods()["pod-0"]["app"][LIC] == ["0007"], "the running pod keeps its seat"


# -- across nodes: exclusive: true ------------------------------------------------


@pytest.fixture
def cluster(apiserver: ApiServer) -> Iterator[Cluster]:
    made = Cluster(apiserver)
    try:
        yield made
    finally:
        made.close()


def _holder(cluster: Cluster, seat: str) -> str | None:
    """The node named by the seat's Lease, or None without one."""
    path = f"/apis/coordination.k8s.io/v1/namespaces/{cluster.namespace}/leases/{lease_name(LIC, seat)}"
    answer = cluster.api.request("GET", path)
    if answer.status != 200:
        return None
    return str(answer.json.get("spec", {}).get("holderIdentity") or "")


def _health(node: Node) -> dict[str, str]:
    state = node.harness.resources().get(LIC)
    return dict(state.devices) if state is not None else {}


def _reports(node: Node, health: dict[str, str]) -> Callable[[], bool]:
    return lambda: _health(node) == health


@pytest.mark.apiserver
@pytest.mark.harness
def test_exclusive_seats_are_counted_across_nodes_freed_and_reused(cluster: Cluster) -> None:
    names = ["node-a", "node-b", "node-c"]
    text = licences(("0007", 2), hosts=f"[{', '.join(names)}]", top="exclusive: true\n")
    a, b, c = (cluster.add(name, text) for name in names)
    for n in (a, b, c):
        n.harness.wait_for(serving(2), timeout=20)
    a_seat = a.harness.admit("pod-a", ONE).raise_for_error().container("app").devices[LIC]
    assert a_seat == ["0007"]
    assert _holder(cluster, "0007") == "node-a"
    # the seat a holds is Unhealthy elsewhere; the other seat is still offered there
    for n in (b, c):
        eventually(_reports(n, {"0007": "Unhealthy", "0007::2": "Healthy"}), timeout=3)
    b_seat = b.harness.admit("pod-b", ONE).raise_for_error().container("app").devices[LIC]
    assert b_seat == ["0007::2"]
    eventually(lambda: _health(c) == {"0007": "Unhealthy", "0007::2": "Unhealthy"}, timeout=3)
    assert not c.harness.admit("pod-c", ONE).ok, "two seats, two holders: the third is refused"

    a.harness.remove("pod-a")
    eventually(lambda: _health(c).get("0007") == "Healthy", timeout=5, what="seat 1 released")
    c_seat = c.harness.admit("pod-c2", ONE).raise_for_error().container("app").devices[LIC]
    assert c_seat == ["0007"]
    assert {s: _holder(cluster, s) for s in ("0007", "0007::2")} == {"0007": "node-c", "0007::2": "node-b"}


@pytest.mark.apiserver
@pytest.mark.harness
def test_a_race_of_three_nodes_never_makes_more_holders_than_seats(cluster: Cluster) -> None:
    # Each node's preference starts at its own seat (spookd.allocation.seat_offset): rig-a
    # and rig-b both start at seat 1, rig-c at seat 2; so every round two Allocates meet
    # on one seat and a third takes the other, and three nodes race for two seats.
    names = ["rig-a", "rig-b", "rig-c"]
    text = licences(("0007", 2), hosts=f"[{', '.join(names)}]", top="exclusive: true\n")
    nodes = [cluster.add(name, text) for name in names]
    for n in nodes:
        n.harness.wait_for(serving(2), timeout=20)
    admitted_per_round = collections.Counter[int]()
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        for round_ in range(30):
            for n in nodes:
                eventually(
                    _reports(n, dict.fromkeys(["0007", "0007::2"], "Healthy")), timeout=10, what="all free"
                )
            pod = f"pod-{round_}"
            futures = [pool.submit(n.harness.admit, pod, ONE) for n in nodes]
            results: list[tuple[Node, AdmitResult]] = [
                (n, f.result()) for n, f in zip(nodes, futures, strict=True)
            ]
            winners = [(n, r) for n, r in results if r.ok]
            assert 1 <= len(winners) <= 2, f"round {round_}: {len(winners)} holders of 2 seats"
            seats = [r.container("app").devices[LIC][0] for _, r in winners]
            assert len(set(seats)) == len(seats), f"round {round_}: one seat twice: {seats}"
            for _, r in results:
                if not r.ok:
                    assert r.error is not None
                    assert "is exclusive and" in r.error or "no healthy devices" in r.error, r.error
            # the Leases agree with the kubelets: one holder per seat, the node that admitted it
            leases = {s: _holder(cluster, s) for s in seats}
            assert leases == {r.container("app").devices[LIC][0]: n.name for n, r in winners}
            admitted_per_round[len(winners)] += 1
            for n, _ in winners:
                n.harness.remove(pod)
            time.sleep(0.05)
    print(f"rounds by holders admitted: {dict(admitted_per_round)}")
    assert admitted_per_round[2], "no round filled both seats: the race never reached the bound"
