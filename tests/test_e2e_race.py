"""Two nodes sharing one device, 50 racing pods: DRA mode against ``exclusive: true`` (issue #19 point 3).

The same race runs twice on one cluster, first in DRA mode, then in device-plugin
mode with ``exclusive: true`` (in that order: after a device plugin leaves, the
kubelet keeps its resource in the Node's capacity at 0 for minutes, and the
scheduler would not use DRA for it). The device ``0001`` of ``skao.int/oscilloscope``
is mapped to ``hosts: [minikube, node-x]``. 50 bare pods (``restartPolicy: Never``,
busybox, ``resources.limits: {skao.int/oscilloscope: 1}``) are created at once, the
even ones preferring minikube and the odd ones node-x (a soft node affinity: left to
itself the scheduler sends every pod to node-x, whose capacity nothing else uses, and
the race would be on one node); each pod seen Running is deleted 1-2 s later,
freeing the device for the next. Both nodes must have run pods. Every
0.2 s all pods are listed: the most pods Running at once (on either node: the
device's holders), how many Failed before they ran (admission failures), how many
were Pending. The firm assertions: never two Running holders in either mode; in DRA
mode also no Failed pod and all 50 ran. In device-plugin mode the Failed count is
the measurement, recorded beside DRA mode's in the e2e timings (LOGS/race.txt).

What is real: the e2e cluster of tests/test_e2e.py (kube-apiserver on etcd,
kube-scheduler, kube-controller-manager with the resource-claim controller, the
kubelet ``minikube`` with containerd 2), Spookd installed on minikube with the Helm
chart (DRA mode: ``dra.enabled``, the publisher Deployment and ``spookd run --dra``;
device-plugin mode: ``rbac.exclusive``, Leases with the default timings), the
scheduler placing each pod on either node.

What stands in: the second node. ``node-x`` is a Node object in the API (labels
``kubernetes.io/hostname: node-x``, minikube's cpu, memory, pods and images, a
heartbeat Lease in kube-node-lease), so the scheduler places pods on it; a second
full kubelet is too heavy for this machine. Its pods are "run" by a loop in this
test acting as node-x's kubelet, which hands each pod bound to node-x to the
kubelet's own code for the device and writes the pod's status as a kubelet would:

- DRA mode: the kubelet's DRA manager and plugin manager (tests/go/cmd/draharness)
  talking to a host ``spookd run --dra --node-name node-x`` (its own kubelet
  directory and CDI directory under a temporary directory): ``PrepareResources`` of
  the pod's claim (the one the scheduler made for its extended resource), then
  status Running; deleted: ``UnprepareResources``, then the pod's final deletion. A
  failed prepare is retried, as a kubelet does (the pod stays Pending), and counted.
- device-plugin mode: the kubelet's device manager (tests/go/cmd/nodeharness) with
  a host ``spookd run`` (``exclusive: true``, Leases in kube-system, the PodResources
  socket of the harness): admitted, status Running; refused, status Failed with
  reason ``UnexpectedAdmissionError``, as the kubelet writes it; deleted: the pod
  removed from the device manager, then its final deletion. node-x's capacity and
  allocatable of the resource are what the device manager reports (Spookd marks the
  device unhealthy while minikube holds its Lease).

No container runs on node-x: "Running" there is the status the stand-in wrote
after the kubelet's own device code accepted the pod.

Runs with the e2e (``SPOOKD_E2E=1``, as root, under ``flock /work/e2e.lock``).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

if os.environ.get("SPOOKD_E2E") != "1":
    pytest.skip("the end-to-end tests run with SPOOKD_E2E=1 (nox -s e2e)", allow_module_level=True)

from conftest import SpookdProcess
from e2e.cluster import LOGS, NODE_NAME, Cluster
from e2e.fixture import reported_cluster
from e2e.host import E2EError, wait_for
from support.apiserver import ApiClient
from support.draharness import DraHarness
from support.nodeharness import NodeHarness

pytestmark = pytest.mark.timeout(3000)

OSC = "skao.int/oscilloscope"
DEVICE = "0001"
OTHER = "node-x"
NAMESPACE = "kube-system"
DRIVER = "spookd.skao.int"
LABEL = "spookd-e2e=race"
PODS = 50
#: A Running pod is deleted this long after it was first seen Running.
RUN_FOR = (1.0, 2.0)
SAMPLE_EVERY = 0.2
#: The bound on one race: pods not ended by then count as timed out.
RACE_TIMEOUT = 900.0
DEVICES = [{"resourceName": OSC, "instanceID": DEVICE, "env": {"IP": "10.0.10.1"}}]
MAPPING = [{"hosts": [NODE_NAME, OTHER], "devices": DEVICES}]
#: Spookd's pods stay on minikube: node-x runs no DaemonSet or Deployment pod.
ON_MINIKUBE = {"kubernetes.io/hostname": NODE_NAME}
MERGE = "application/merge-patch+json"
NODE_LEASE = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The e2e cluster with its scheduler and controllers (no Spookd yet)."""
    with reported_cluster(request, "e2e race timings", "race.txt") as cluster:
        yield cluster


def now_rfc3339(micro: bool = False) -> str:
    stamp = datetime.now(UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Admission:
    """What node-x's kubelet code said about a pod: Running, Failed (with reason), or retry later."""

    phase: str | None
    reason: str = ""
    message: str = ""


@dataclass
class StandInKubelet:
    """node-x's kubelet, as far as the race needs one; see the module's docstring."""

    api: ApiClient
    admit: Callable[[dict[str, Any]], Admission]
    release: Callable[[dict[str, Any]], None]
    #: The resource's (capacity, allocatable) from the node's device code; None in DRA mode.
    devices: Callable[[], tuple[int, int]] | None = None
    errors: list[str] = field(default_factory=list)
    #: Pod name -> how often its admission was retried (DRA: a failed prepare).
    retries: dict[str, int] = field(default_factory=dict)
    started: set[str] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)
    _advertised: tuple[int, int] | None = None

    def create_node(self, minikube: dict[str, Any]) -> None:
        """The Node node-x, Ready, with minikube's capacity and images, and its heartbeat Lease."""
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": OTHER,
                "labels": {
                    "kubernetes.io/hostname": OTHER,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": minikube["metadata"]["labels"].get("kubernetes.io/arch", "amd64"),
                },
            },
        }
        answer = self.api.create(node)
        assert answer.status == 201, answer.text
        general = {k: v for k, v in minikube["status"]["capacity"].items() if k in ("cpu", "memory", "pods")}
        stamp = now_rfc3339()
        status = {
            "capacity": dict(general),
            "allocatable": {k: minikube["status"]["allocatable"][k] for k in general},
            "images": minikube["status"].get("images", []),
            "nodeInfo": minikube["status"].get("nodeInfo", {}),
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "stand-in kubelet of tests/test_e2e_race.py",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
            ],
        }
        self._patch_status(status)
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": OTHER, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": OTHER,
                "leaseDurationSeconds": 40,
                "renewTime": now_rfc3339(micro=True),
            },
        }
        answer = self.api.create(lease)
        assert answer.status == 201, answer.text
        self.sync_devices()

    def _patch_status(self, status: dict[str, Any]) -> None:
        answer = self.api.request(
            "PATCH", f"/api/v1/nodes/{OTHER}/status", body={"status": status}, content_type=MERGE
        )
        assert answer.status == 200, answer.text

    def sync_devices(self) -> None:
        """Capacity and allocatable of the resource as the device manager reports them."""
        if self.devices is None:
            return
        seen = self.devices()
        if seen != self._advertised:
            capacity, allocatable = seen
            self._patch_status({"capacity": {OSC: str(capacity)}, "allocatable": {OSC: str(allocatable)}})
            self._advertised = seen

    def heartbeat(self) -> None:
        path = f"{NODE_LEASE}/{OTHER}"
        body = {"spec": {"renewTime": now_rfc3339(micro=True)}}
        answer = self.api.request("PATCH", path, body=body, content_type=MERGE)
        assert answer.status == 200, answer.text

    def run(self) -> None:
        """Until ``stop``: the node's pods admitted, started, and finally deleted."""
        beat = 0.0
        while not self.stop.is_set():
            try:
                if time.monotonic() - beat > 5.0:
                    self.heartbeat()
                    beat = time.monotonic()
                self.sync_devices()
                listing = self.api.request(
                    "GET", "/api/v1/pods", query={"fieldSelector": f"spec.nodeName={OTHER}"}
                )
                assert listing.status == 200, listing.text
                for pod in listing.json["items"]:
                    self._handle(pod)
            except Exception as error:  # recorded: the test asserts there are none
                self.errors.append(f"{type(error).__name__}: {error}")
            self.stop.wait(0.1)

    def _handle(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        uid = pod["metadata"]["uid"]
        path = f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/{name}"
        if "deletionTimestamp" in pod["metadata"]:
            if uid in self.started:
                self.release(pod)
                self.started.discard(uid)
            body = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
            answer = self.api.request("DELETE", path, body=body)
            assert answer.status in (200, 404, 409), answer.text
            return
        if uid in self.started or pod["status"].get("phase") != "Pending":
            return
        outcome = self.admit(pod)
        if outcome.phase is None:
            self.retries[name] = self.retries.get(name, 0) + 1
            return
        stamp = now_rfc3339()
        status: dict[str, Any] = {"phase": outcome.phase, "startTime": stamp}
        if outcome.phase == "Running":
            self.started.add(uid)
            status["conditions"] = [
                {"type": t, "status": "True", "lastTransitionTime": stamp}
                for t in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
            ]
        else:
            status["reason"] = outcome.reason
            status["message"] = outcome.message
        # Strategic merge: the scheduler's PodScheduled condition stays.
        answer = self.api.request(
            "PATCH",
            path + "/status",
            body={"status": status},
            content_type="application/strategic-merge-patch+json",
        )
        assert answer.status == 200, answer.text

    def remove_node(self) -> None:
        """The Node, its Lease and any pod left on it."""
        answer = self.api.request("DELETE", f"{NODE_LEASE}/{OTHER}")
        assert answer.status in (200, 404), answer.text
        self.api.request("DELETE", f"/api/v1/nodes/{OTHER}")
        listing = self.api.request("GET", "/api/v1/pods", query={"fieldSelector": f"spec.nodeName={OTHER}"})
        for pod in listing.json.get("items", []):
            meta = pod["metadata"]
            self.api.request(
                "DELETE",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                body={"gracePeriodSeconds": 0},
            )


@dataclass
class Tracked:
    name: str
    node: str = ""
    #: "ran" (Running, then deleted by the test), "Failed" (before running), "timeout".
    outcome: str = ""
    detail: str = ""
    running_since: float | None = None
    run_for: float = 0.0
    deleted: bool = False
    was_unschedulable: bool = False


@dataclass
class Figures:
    """One race's numbers."""

    mode: str
    pods: int = 0
    ran: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    timed_out: int = 0
    max_holders: int = 0
    max_pending: int = 0
    ever_unschedulable: int = 0
    seconds: float = 0.0
    samples: int = 0
    overlaps: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    #: The reason of each pod that failed before it ran (the kubelet's, or the stand-in's).
    reasons: set[str] = field(default_factory=set)
    extra: str = ""

    def line(self) -> str:
        ran = sum(self.ran.values())
        failed = sum(self.failed.values())
        return (
            f"race {self.mode}: {self.pods} pods, {ran} ran ({self._split(self.ran)}), "
            f"{failed} Failed ({self._split(self.failed)}), {self.timed_out} timed out; "
            f"max Running holders {self.max_holders}; max Pending {self.max_pending}, "
            f"{self.ever_unschedulable} ever unschedulable; {self.seconds:.0f} s, {self.samples} samples"
            f"{'; ' + self.extra if self.extra else ''}"
        )

    @staticmethod
    def _split(counts: dict[str, int]) -> str:
        return ", ".join(f"{node} {counts.get(node, 0)}" for node in (NODE_NAME, OTHER))


FIGURES: dict[str, Figures] = {}


def race_pod(index: int) -> dict[str, Any]:
    """Pod ``index``; even ones prefer minikube, odd ones node-x (the scheduler would send all to the emptier node-x)."""
    preferred = NODE_NAME if index % 2 == 0 else OTHER
    term = {"key": "kubernetes.io/hostname", "operator": "In", "values": [preferred]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"race-{index:02d}", "namespace": "default", "labels": {"spookd-e2e": "race"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "affinity": {
                "nodeAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 100, "preference": {"matchExpressions": [term]}}
                    ]
                }
            },
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


def unschedulable(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "PodScheduled" and c["status"] == "False" and c.get("reason") == "Unschedulable"
        for c in pod["status"].get("conditions", [])
    )


def race(cluster: Cluster, mode: str, seed: int) -> Figures:
    """50 pods at once; each Running one deleted after 1-2 s; sampled until all ended (or the bound)."""
    api = cluster.client()
    rng = random.Random(seed)
    figures = Figures(mode, pods=PODS)
    tracked = {f"race-{i:02d}": Tracked(f"race-{i:02d}") for i in range(PODS)}
    began = time.monotonic()
    for index in range(PODS):
        answer = api.create(race_pod(index))
        assert answer.status == 201, answer.text
    try:
        while time.monotonic() - began < RACE_TIMEOUT:
            now = time.monotonic()
            listing = api.request("GET", "/api/v1/namespaces/default/pods", query={"labelSelector": LABEL})
            assert listing.status == 200, listing.text
            figures.samples += 1
            present = {pod["metadata"]["name"]: pod for pod in listing.json["items"]}
            holders = [p for p in present.values() if p["status"].get("phase") == "Running"]
            figures.max_holders = max(figures.max_holders, len(holders))
            if len(holders) > 1:
                figures.overlaps.append(
                    f"{now - began:.1f} s: "
                    + ", ".join(f"{p['metadata']['name']} on {p['spec']['nodeName']}" for p in holders)
                )
            pending = [p for p in present.values() if p["status"].get("phase") == "Pending"]
            figures.max_pending = max(figures.max_pending, len(pending))
            for name, t in tracked.items():
                pod = present.get(name)
                if t.outcome:
                    continue
                if pod is None:
                    if t.deleted:
                        t.outcome = "ran"
                        figures.ran[t.node] = figures.ran.get(t.node, 0) + 1
                    else:
                        t.outcome, t.detail = "vanished", "gone without the test deleting it"
                        figures.failures.append(f"{name}: {t.detail}")
                    continue
                status = pod["status"]
                t.node = pod["spec"].get("nodeName", "") or t.node
                t.was_unschedulable = t.was_unschedulable or unschedulable(pod)
                if t.deleted:
                    continue  # Running, then deleted: whatever its phase now, it ends when it is gone
                if status.get("phase") == "Running":
                    if t.running_since is None:
                        t.running_since, t.run_for = now, rng.uniform(*RUN_FOR)
                    elif now - t.running_since >= t.run_for:
                        answer = api.request("DELETE", f"/api/v1/namespaces/default/pods/{name}")
                        assert answer.status in (200, 202), answer.text
                        t.deleted = True
                elif status.get("phase") in ("Failed", "Succeeded"):
                    t.outcome = status["phase"]
                    t.detail = f"{status.get('reason', '')}: {status.get('message', '')}"
                    figures.failed[t.node] = figures.failed.get(t.node, 0) + 1
                    figures.failures.append(f"{name} on {t.node}: {t.outcome} {t.detail}")
                    figures.reasons.add(f"{t.outcome}/{status.get('reason', '')}")
                    api.request("DELETE", f"/api/v1/namespaces/default/pods/{name}")
            if all(t.outcome for t in tracked.values()):
                break
            time.sleep(max(0.0, SAMPLE_EVERY - (time.monotonic() - now)))
    finally:
        figures.seconds = time.monotonic() - began
        api.request("DELETE", "/api/v1/namespaces/default/pods", query={"labelSelector": LABEL})
    figures.timed_out = sum(1 for t in tracked.values() if not t.outcome)
    figures.ever_unschedulable = sum(1 for t in tracked.values() if t.was_unschedulable)
    wait_for("the race's pods gone", lambda: _no_race_pods(api) or None, 120)
    return figures


def _no_race_pods(api: ApiClient) -> bool:
    listing = api.request("GET", "/api/v1/namespaces/default/pods", query={"labelSelector": LABEL})
    return listing.status == 200 and not listing.json["items"]


def record(cluster: Cluster, figures: Figures) -> None:
    FIGURES[figures.mode] = figures
    cluster.notes.append(figures.line())
    cluster.notes.extend(f"  {line}" for line in figures.overlaps[:20] + figures.failures[:60])
    print(figures.line())


def helm_install(cluster: Cluster, values: dict[str, Any], workdir: Path, what: str) -> None:
    from support.helm import helm_binary

    path = workdir / "values.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    began = time.monotonic()
    done = cluster.shell(
        [str(helm_binary()), "install", "spookd", "helm/spookd", "-n", NAMESPACE, "-f", str(path), "--wait", "--timeout=180s"],
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(f"helm install ({what}) failed:\n{done.stdout}{done.stderr}\n{cluster.logs()}")
    cluster.timings[f"helm install --wait ({what})"] = time.monotonic() - began


def helm_uninstall(cluster: Cluster, what: str) -> None:
    from support.helm import helm_binary

    began = time.monotonic()
    cluster.shell([str(helm_binary()), "uninstall", "spookd", "-n", NAMESPACE, "--wait"], check=False)
    api = cluster.client()

    def gone() -> bool | None:
        listing = api.request(
            "GET",
            f"/api/v1/namespaces/{NAMESPACE}/pods",
            query={"labelSelector": "app.kubernetes.io/instance=spookd"},
        )
        return True if listing.status == 200 and not listing.json["items"] else None

    wait_for(f"Spookd's pods ({what}) gone", gone, 120)
    cluster.timings[f"helm uninstall ({what}) to pods gone"] = time.monotonic() - began


def start_stand_in(kubelet: StandInKubelet, cluster: Cluster) -> threading.Thread:
    kubelet.create_node(cluster.node())
    thread = threading.Thread(target=kubelet.run, name="node-x kubelet", daemon=True)
    thread.start()
    return thread


def stop_stand_in(kubelet: StandInKubelet, thread: threading.Thread) -> None:
    kubelet.stop.set()
    thread.join(timeout=30)
    kubelet.remove_node()


def test_dra_mode_never_two_holders_and_no_admission_failure(cluster: Cluster) -> None:
    api = cluster.client()
    workdir = Path(tempfile.mkdtemp(prefix="spk-r-", dir="/tmp"))
    kubelet_dir, cdi_dir, state_dir = workdir / "k", workdir / "cdi", workdir / "state"
    for directory in (kubelet_dir, cdi_dir, state_dir):
        directory.mkdir()
    apiserver = cluster.start_control_plane()
    spookd = SpookdProcess(workdir / "unused-plugin-dir", workdir, node_name=OTHER)
    spookd.write(yaml.safe_dump({"deviceMapping": MAPPING}, sort_keys=False))
    prepared: dict[str, list[str]] = {}
    unprepare_errors: list[str] = []
    harness: DraHarness | None = None
    thread: threading.Thread | None = None

    def admit(pod: dict[str, Any]) -> Admission:
        assert harness is not None
        answer = harness.request(
            "prepare", namespace=pod["metadata"]["namespace"], pod=pod["metadata"]["name"]
        )
        if answer.get("error"):
            return Admission(None, message=answer["error"])  # the kubelet retries; the pod stays Pending
        prepared[pod["metadata"]["name"]] = answer["containers"].get("app", [])
        return Admission("Running")

    def release(pod: dict[str, Any]) -> None:
        assert harness is not None
        answer = harness.request(
            "unprepare", namespace=pod["metadata"]["namespace"], pod=pod["metadata"]["name"]
        )
        if answer.get("error"):
            unprepare_errors.append(f"{pod['metadata']['name']}: {answer['error']}")

    kubelet = StandInKubelet(api, admit, release)
    try:
        thread = start_stand_in(kubelet, cluster)
        helm_install(
            cluster,
            {
                "dra": {"enabled": True, "publisher": {"nodeSelector": ON_MINIKUBE}},
                "nodeSelector": ON_MINIKUBE,
                "deviceMapping": MAPPING,
            },
            workdir,
            "DRA",
        )
        spookd.start(
            "--dra",
            "--kubelet-dir",
            str(kubelet_dir),
            "--cdi-dir",
            str(cdi_dir),
            kubeconfig=apiserver.kubeconfig,
        )
        harness = DraHarness.start(
            apiserver.kubeconfig,
            kubelet_dir,
            state_dir,
            node=OTHER,
            driver=DRIVER,
            log_path=workdir / "draharness.log",
        )
        harness.wait_registered(timeout=60)
        wait_for("the shared device published", lambda: _shared_slice(api) or None, 120)
        figures = race(cluster, "DRA", seed=19)
        figures.extra = f"{OTHER} prepare retries {sum(kubelet.retries.values())}, unprepare errors {len(unprepare_errors)}"
        record(cluster, figures)
    finally:
        if thread is not None:
            stop_stand_in(kubelet, thread)
        if harness is not None:
            (LOGS / "race-draharness-node-x.log").write_text(harness.log_text())
            harness.close()
        (LOGS / "race-spookd-dra-node-x.log").write_text(spookd.log_text())
        if spookd.process is not None and spookd.process.poll() is None:
            spookd.stop()
        (LOGS / "race-spookd-dra-node.log").write_text(
            cluster.kubectl("-n", NAMESPACE, "logs", "daemonset/spookd", check=False).stdout
        )
        helm_uninstall(cluster, "DRA")
        _remove_dra_objects(api)
        shutil.rmtree(workdir, ignore_errors=True)

    assert kubelet.errors == [], kubelet.errors[:10]
    assert figures.overlaps == [], figures.overlaps[:10]
    assert figures.max_holders == 1, figures.line()
    assert figures.failures == [], figures.failures[:10]
    assert figures.timed_out == 0, figures.line()
    assert sum(figures.ran.values()) == PODS, figures.line()
    # A race between the two nodes: each got the device at least once.
    assert figures.ran.get(NODE_NAME, 0) >= 1, figures.line()
    assert figures.ran.get(OTHER, 0) >= 1, figures.line()
    # Every pod node-x ran got the device's CDI ID from the node-x Spookd.
    assert all(ids and ids[0].startswith(f"{DRIVER}/claim=") for ids in prepared.values()), prepared
    assert unprepare_errors == [], unprepare_errors


def _shared_slice(api: ApiClient) -> bool:
    answer = api.request(
        "GET", "/apis/resource.k8s.io/v1/resourceslices", query={"fieldSelector": f"spec.driver={DRIVER}"}
    )
    assert answer.status == 200, answer.text
    return any(
        item["spec"]["pool"]["name"].startswith("shared-") and item["spec"].get("devices")
        for item in answer.json["items"]
    )


def _remove_dra_objects(api: ApiClient) -> None:
    """The publisher's slices and DeviceClasses outlive the release: remove them before device-plugin mode."""
    api.request(
        "DELETE", "/apis/resource.k8s.io/v1/resourceslices", query={"fieldSelector": f"spec.driver={DRIVER}"}
    )
    api.request("DELETE", "/apis/resource.k8s.io/v1/deviceclasses/oscilloscope.skao.int")


def test_device_plugin_mode_exclusive_never_two_holders_failures_counted(cluster: Cluster) -> None:
    api = cluster.client()
    workdir = Path(tempfile.mkdtemp(prefix="spk-r-", dir="/tmp"))
    plugin_dir = workdir / "p"
    plugin_dir.mkdir()
    harness = NodeHarness(log_dir=workdir, pod_resources_socket=workdir / "podres.sock")
    spookd = SpookdProcess(plugin_dir, workdir, node_name=OTHER)
    spookd.write(yaml.safe_dump({"exclusive": True, "deviceMapping": MAPPING}, sort_keys=False))
    admitted: dict[str, str] = {}

    def admit(pod: dict[str, Any]) -> Admission:
        uid = pod["metadata"]["uid"]
        result = harness.admit(uid, {"app": {OSC: 1}}, name=pod["metadata"]["name"], namespace="default")
        if not result.ok:
            return Admission(
                "Failed", result.reason or "UnexpectedAdmissionError", result.message or result.error or ""
            )
        admitted[uid] = pod["metadata"]["name"]
        return Admission("Running")

    def release(pod: dict[str, Any]) -> None:
        harness.remove(pod["metadata"]["uid"])

    def devices() -> tuple[int, int]:
        resources = harness.resources()
        return (resources.capacity(OSC), resources.allocatable(OSC)) if OSC in resources else (0, 0)

    kubelet = StandInKubelet(api, admit, release, devices)
    thread: threading.Thread | None = None
    try:
        helm_install(
            cluster,
            {"nodeSelector": ON_MINIKUBE, "deviceMapping": MAPPING, "rbac": {"exclusive": True}},
            workdir,
            "device plugin, exclusive",
        )
        try:
            wait_for(
                "minikube advertising the shared device",
                lambda: cluster.node()["status"].get("allocatable", {}).get(OSC) == "1" or None,
                180,
            )
        except E2EError as error:
            raise AssertionError(f"{error}\n{cluster.logs()}") from None
        harness.start(plugin_dir)
        spookd.start(
            "--lease-namespace", NAMESPACE, "--pod-resources-socket", str(workdir / "podres.sock"),
            kubeconfig=cluster.start_control_plane().kubeconfig,
        )  # fmt: skip
        harness.wait_for(lambda r: r.is_registered(OSC) and r.capacity(OSC) == 1, timeout=30)
        thread = start_stand_in(kubelet, cluster)
        figures = race(cluster, "device plugin, exclusive: true", seed=14)
        figures.extra = f"{OTHER} admitted {len(admitted)}"
        record(cluster, figures)
    finally:
        if thread is not None:
            stop_stand_in(kubelet, thread)
        (LOGS / "race-spookd-node-x.log").write_text(spookd.log_text())
        if spookd.process is not None and spookd.process.poll() is None:
            spookd.stop()
        harness.close()
        (LOGS / "race-spookd-node.log").write_text(
            cluster.kubectl("-n", NAMESPACE, "logs", "daemonset/spookd", check=False).stdout
        )
        helm_uninstall(cluster, "device plugin")
        shutil.rmtree(workdir, ignore_errors=True)

    dra = FIGURES.get("DRA")
    cluster.notes.append("race side by side (same 50 pods, two nodes, one device):")
    for figures_of_mode in (dra, figures):
        if figures_of_mode is not None:
            cluster.notes.append("  " + figures_of_mode.line())
    assert kubelet.errors == [], kubelet.errors[:10]
    assert figures.overlaps == [], figures.overlaps[:10]
    assert figures.max_holders == 1, figures.line()
    assert figures.timed_out == 0, figures.line()
    assert figures.reasons <= {"Failed/UnexpectedAdmissionError"}, figures.failures[:10]
    # A race between the two nodes: each was given pods.
    for node in (NODE_NAME, OTHER):
        assert figures.ran.get(node, 0) + figures.failed.get(node, 0) >= 1, figures.line()
    assert sum(figures.ran.values()) + sum(figures.failed.values()) == PODS, figures.line()
