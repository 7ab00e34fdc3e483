"""Admission failures of an exclusive device under the real scheduler, counted (issue #14 point 5).

What is real: the e2e cluster of tests/test_e2e.py (kube-apiserver on etcd,
kube-scheduler, kube-controller-manager, the kubelet ``minikube`` with containerd),
Spookd installed on it with the Helm chart (``rbac.exclusive: true``: Lease Role and
the PodResources socket mounted), the default timings (15 s Lease, 5 s release grace).
What stands in: the second node sharing the device. ``node-x`` is a Spookd process
on the host with a node harness (the kubelet's own device manager, no pods run)
against the same API server, configured with the same ``exclusive: true`` mapping.
It has no Node object, so the scheduler never places pods there; it only takes and
frees the device the way a second kubelet would, by admitting and removing a pod.

While node-x takes and frees the device in a cycle, pods asking for it are created
on the cluster while node-x holds it (bare Pods, as an operator's test would; a pod
created while minikube holds the device just waits its turn there, and a stream of
them keeps minikube holding it for good, so node-x would never get it back). Each
pod's outcome is counted: Running (got the device), Pending (unschedulable: the
scheduler saw no free device), or Failed with ``UnexpectedAdmissionError`` (bound
to minikube while the device was held elsewhere; the kubelet refused it). A
measurement: the counts and rates are printed and written to the e2e timings; the
firm assertions are only what must hold: never two holders (no pod Running on
minikube while node-x holds the device), and every pod ends in one of the three
states.

Runs with the e2e (``SPOOKD_E2E=1``, as root, under ``flock /work/e2e.lock``).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

if os.environ.get("SPOOKD_E2E") != "1":
    pytest.skip("the end-to-end tests run with SPOOKD_E2E=1 (nox -s e2e)", allow_module_level=True)

from conftest import SpookdProcess
from e2e.cluster import LOGS, NODE_NAME, Cluster
from e2e.fixture import reported_cluster
from e2e.host import wait_for
from support.nodeharness import NodeHarness

from spookd.kube.leaserecords import lease_name

pytestmark = pytest.mark.timeout(3000)

OSC = "skao.int/oscilloscope"
DEVICE = "0001"
OTHER = "node-x"
NAMESPACE = "kube-system"  # the release's namespace: the Leases live there
LABEL = "spookd-e2e=admission"
#: How long the measurement runs, and the other node's cycle (hold, then free).
MEASURE_SECONDS = 200.0
HOLD = (6.0, 14.0)
FREE = (4.0, 10.0)
#: A new pod every this many seconds (while fewer than MAX_OPEN are undecided).
CREATE_EVERY = (1.0, 4.0)
MAX_OPEN = 3
#: A pod still Pending this long after its creation counts as Pending.
PENDING_AFTER = 30.0
#: A Running pod is deleted after this long, freeing the device.
RUN_FOR = 3.0
DEVICES = [{"resourceName": OSC, "instanceID": DEVICE, "env": {"IP": "10.0.10.1"}}]


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The e2e cluster with its scheduler and controllers (no Spookd yet)."""
    with reported_cluster(request, "e2e admission timings", "admission.txt") as cluster:
        yield cluster


@dataclass
class Other:
    """node-x: a Spookd on the host with the kubelet's device manager (node harness)."""

    harness: NodeHarness
    spookd: SpookdProcess
    workdir: Path
    #: True from a successful admission until just before its removal: within node-x's Lease.
    holds: bool = False
    cycles: int = 0
    refused: int = 0

    def health(self) -> str | None:
        state = self.harness.resources().get(OSC)
        return state.devices.get(DEVICE) if state is not None else None


@pytest.fixture(scope="module")
def other(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Other]:
    """Spookd on minikube through the Helm chart, and node-x sharing its device."""
    from support.helm import helm_binary

    helm = str(helm_binary())
    values = tmp_path_factory.mktemp("helm") / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "deviceMapping": [{"hosts": [NODE_NAME, OTHER], "devices": DEVICES}],
                "rbac": {"exclusive": True},
            },
            sort_keys=False,
        )
    )
    cluster.shell(
        [helm, "install", "spookd", "helm/spookd", "-n", NAMESPACE, "-f", str(values), "--wait", "--timeout=180s"]
    )  # fmt: skip
    cluster.kubectl("-n", NAMESPACE, "rollout", "status", "daemonset/spookd", "--timeout=120s")
    wait_for("minikube advertising the shared device", lambda: _allocatable(cluster) == 1 or None, 120)

    workdir = Path(tempfile.mkdtemp(prefix="spk-x-", dir="/tmp"))
    plugin_dir = workdir / "p"
    plugin_dir.mkdir()
    harness = NodeHarness(log_dir=workdir, pod_resources_socket=workdir / "podres.sock")
    harness.start(plugin_dir)
    spookd = SpookdProcess(plugin_dir, workdir, node_name=OTHER)
    spookd.write(
        yaml.safe_dump(
            {"exclusive": True, "deviceMapping": [{"hosts": [NODE_NAME, OTHER], "devices": DEVICES}]},
            sort_keys=False,
        )
    )
    api = cluster.start_control_plane()
    spookd.start(
        "--lease-namespace", NAMESPACE, "--pod-resources-socket", str(workdir / "podres.sock"),
        kubeconfig=api.kubeconfig,
    )  # fmt: skip
    node = Other(harness, spookd, workdir)
    try:
        harness.wait_for(lambda r: r.is_registered(OSC) and r.capacity(OSC) == 1, timeout=30)
        wait_for("node-x seeing the device free", lambda: node.health() == "Healthy" or None, 30)
        yield node
    finally:
        (LOGS / "spookd-node-x.log").write_text(spookd.log_text())
        if spookd.process is not None and spookd.process.poll() is None:
            spookd.stop()
        harness.close()
        shutil.rmtree(workdir, ignore_errors=True)
        cluster.shell([helm, "uninstall", "spookd", "-n", NAMESPACE, "--wait"], check=False)


def _allocatable(cluster: Cluster) -> int:
    return int(cluster.node()["status"].get("allocatable", {}).get(OSC, "0"))


@dataclass
class Tracked:
    name: str
    created: float
    #: node-x held the device when the pod was created.
    held_elsewhere: bool
    outcome: str = ""
    #: The pod was seen Pending (unschedulable) before it ran.
    was_pending: bool = False
    detail: str = ""
    running_since: float | None = None
    states: list[str] = field(default_factory=list)


def _pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"spookd-e2e": "admission"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "app",
                    "image": "busybox:1.37",
                    "command": ["sleep", "3600"],
                    "resources": {"limits": {OSC: "1"}},
                }
            ],
        },
    }


def _unschedulable(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "PodScheduled" and c["status"] == "False" and c.get("reason") == "Unschedulable"
        for c in pod["status"].get("conditions", [])
    )


def _running(pod: dict[str, Any]) -> bool:
    statuses = pod["status"].get("containerStatuses", [])
    return pod["status"].get("phase") == "Running" and any("running" in s.get("state", {}) for s in statuses)


def _cycle_other(other: Other, stop: threading.Event, rng: random.Random) -> None:
    """node-x takes the device (admits a pod), keeps it, frees it; again until ``stop``."""
    while not stop.is_set():
        result = other.harness.admit(f"x-{other.cycles}-{other.refused}", {"app": {OSC: 1}})
        if not result.ok:
            other.refused += 1  # minikube holds it (or is taking it): try again soon
            stop.wait(1.0)
            continue
        other.holds = True
        pod = result.pod
        stop.wait(rng.uniform(*HOLD))
        other.holds = False
        other.harness.remove(pod)
        other.cycles += 1
        stop.wait(rng.uniform(*FREE))


def test_pods_scheduled_while_the_device_is_held_elsewhere_pend_or_fail_admission(
    cluster: Cluster, other: Other
) -> None:
    api = cluster.client()
    rng = random.Random(14)
    stop = threading.Event()
    cycler = threading.Thread(target=_cycle_other, args=(other, stop, rng), daemon=True)
    tracked: dict[str, Tracked] = {}
    overlaps: list[str] = []
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{lease_name(OSC, DEVICE)}"
    holders: set[str] = set()
    cycler.start()
    try:
        end = time.monotonic() + MEASURE_SECONDS
        next_create = time.monotonic() + 2.0
        count = 0
        while time.monotonic() < end or any(not t.outcome for t in tracked.values()):
            now = time.monotonic()
            open_pods = [t for t in tracked.values() if not t.outcome]
            if now < end and now >= next_create and len(open_pods) < MAX_OPEN and other.holds:
                name = f"osc-{count:03d}"
                count += 1
                answer = api.create(_pod(name))
                assert answer.status == 201, answer.text
                tracked[name] = Tracked(name, now, held_elsewhere=other.holds)
                next_create = now + rng.uniform(*CREATE_EVERY)
            x_holds = other.holds
            listing = api.request("GET", "/api/v1/namespaces/default/pods", query={"labelSelector": LABEL})
            assert listing.status == 200, listing.text
            lease = api.request("GET", lease_path)
            if lease.status == 200:
                holders.add(lease.json["spec"].get("holderIdentity") or "")
            for pod in listing.json["items"]:
                t = tracked.get(pod["metadata"]["name"])
                if t is None or t.outcome:
                    continue
                status = pod["status"]
                state = f"{status.get('phase')}/{status.get('reason', '')}"
                if not t.states or t.states[-1] != state:
                    t.states.append(state)
                if _running(pod):
                    if x_holds and other.holds:
                        overlaps.append(f"{t.name} Running on {NODE_NAME} while {OTHER} holds {DEVICE}")
                    if t.running_since is None:
                        t.running_since = now
                    elif now - t.running_since >= RUN_FOR:
                        t.outcome = "Running"
                elif status.get("phase") == "Failed":
                    t.outcome = "Failed"
                    t.detail = f"{status.get('reason', '')}: {status.get('message', '')}"
                elif status.get("phase") == "Pending" and _unschedulable(pod):
                    t.was_pending = True
                    if now - t.created >= PENDING_AFTER:
                        t.outcome = "Pending"
                elif now - t.created > 120:
                    t.outcome = "undefined"
                    t.detail = str(t.states)
                if t.outcome:
                    api.request("DELETE", f"/api/v1/namespaces/default/pods/{t.name}")
            if time.monotonic() > end + 300:
                break
            time.sleep(0.2)
    finally:
        stop.set()
        cycler.join(timeout=30)
        api.request("DELETE", "/api/v1/namespaces/default/pods", query={"labelSelector": LABEL})

    outcomes = [t.outcome for t in tracked.values()]
    failed = [t for t in tracked.values() if t.outcome == "Failed"]
    elsewhere = [t for t in tracked.values() if t.held_elsewhere]
    failed_elsewhere = [t for t in elsewhere if t.outcome == "Failed"]
    summary = (
        f"admission under contention: {len(tracked)} pods in {MEASURE_SECONDS:.0f} s, "
        f"{outcomes.count('Running')} Running ({sum(t.was_pending for t in tracked.values() if t.outcome == 'Running')} "
        f"after Pending), {outcomes.count('Pending')} Pending {PENDING_AFTER:.0f} s, "
        f"{len(failed)} Failed ({len(failed) / max(1, len(tracked)):.0%}); created while {OTHER} held the device: "
        f"{len(elsewhere)}, of which Failed {len(failed_elsewhere)} "
        f"({len(failed_elsewhere) / max(1, len(elsewhere)):.0%}); {OTHER}: {other.cycles} holds, "
        f"{other.refused} refused; Lease holders seen {sorted(holders)}"
    )
    cluster.notes.append(summary)
    for t in tracked.values():
        cluster.notes.append(
            f"  {t.name}: {t.outcome}{' after Pending' if t.was_pending and t.outcome == 'Running' else ''}"
            f"{' (created while held elsewhere)' if t.held_elsewhere else ''} {t.detail} {t.states}"
        )
    print(summary)

    assert overlaps == [], overlaps
    undefined = [t for t in tracked.values() if t.outcome not in ("Running", "Failed", "Pending")]
    assert undefined == [], [(t.name, t.outcome, t.states) for t in undefined]
    reasons = {t.detail.split(":")[0] for t in failed}
    assert reasons <= {"UnexpectedAdmissionError"}, [t.detail for t in failed]
    assert other.cycles >= 3, f"{OTHER} held the device only {other.cycles} times"
    assert len(tracked) >= 10, summary
