"""The original's walkthrough on a real single-node cluster, typed with kubectl (docs/e2e.md).

kube-apiserver on etcd, kube-controller-manager, kube-scheduler, kube-proxy and the
kubelet built from k8s.io/kubernetes v1.37.2; containerd 2 built from its Go module,
runc from Debian; Spookd's image built from the Containerfile with buildah on a
Debian base made here; kubectl v1.37.2. Spookd runs as the DaemonSet's pod of
deploy/spookd-device-plugin.yaml, applied unchanged (the node is called
``minikube``, as in the original), and reaches the API server through the
``kubernetes`` Service with the token the kubelet mounts. The tests follow the
stages of the set-up, so a broken stage fails its own test first, then type the
walkthrough's commands one by one.

Runs only when asked (it needs root, installs Debian packages and takes minutes):
``SPOOKD_E2E=1 pytest tests/test_e2e.py`` (the ``e2e`` nox session). When asked, a
missing prerequisite is a failure, never a skip.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

if os.environ.get("SPOOKD_E2E") != "1":
    pytest.skip("the end-to-end walkthrough runs with SPOOKD_E2E=1 (nox -s e2e)", allow_module_level=True)

from e2e import containerd, evidence, images, spookd_image
from e2e.cluster import HOST_IP, LOGS, NODE_IP, NODE_NAME, PLUGIN_MANIFEST, STATIC_PODS, Cluster
from e2e.fixture import reported_cluster
from e2e.host import E2EError, wait_for
from support import gobuild

# The first test's set-up does the cold builds (on a new machine the kubelet binary
# alone takes about 8 min, containerd 3, kubectl and the image a few each); nothing is timed.
pytestmark = pytest.mark.timeout(3000)

REPO = Path(__file__).resolve().parent.parent
TEST_DEPLOYMENT = REPO / "deploy" / "spookd-test-deployment.yaml"
LABELS = "app.kubernetes.io/name=spookd-test"

WIDGET = {"IP": "192.168.0.200", "PORT": "12345"}
SPOOKD_RESOURCES = ("example.com/widget", "example.com/thingamajig")
#: The e2e kubelet's nodeStatusUpdateFrequency (its default), in seconds.
NODE_STATUS_UPDATE = 10


def expected_env(widget: str, thingamajig: str, widget_env: dict[str, str]) -> list[str]:
    """SPEC §5: exactly these variables for one widget and one thingamajig, as ``env | sort`` prints them."""
    env = {}
    for prefix, resource, device, extra in (
        ("EXAMPLECOM_WIDGET", "example.com/widget", widget, widget_env),
        ("EXAMPLECOM_THINGAMAJIG", "example.com/thingamajig", thingamajig, {}),
    ):
        values = {"ID": device, "TYPE": resource, **extra}
        for key, value in values.items():
            env[f"{prefix}_DEV0_{key}"] = value
            env[f"{prefix}_{key}"] = value
        env[f"{prefix}_NUM_DEVICES"] = "1"
    return sorted(f"{key}={value}" for key, value in env.items())


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The cluster, prepared (packages, builds); each test starts the stages it needs."""
    with reported_cluster(request, "e2e timings", "timings.txt", controllers=False) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def walkthrough(cluster: Cluster) -> dict[str, Any]:
    """Spookd serving, and ``kubectl apply -f deploy/spookd-test-deployment.yaml``."""
    cluster.start_spookd()
    deployment = yaml.safe_load(TEST_DEPLOYMENT.read_text())
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["image"] for c in containers] == ["busybox:1.37"], (
        "the test deployment's image changed: import it under its new name (tests/e2e/images.py)"
    )
    applied = cluster.kubectl("apply", "-f", "deploy/spookd-test-deployment.yaml").stdout
    running, pending = wait_split(cluster, timeout=120)
    return {"applied": applied, "running": running, "pending": pending}


def pods(cluster: Cluster) -> list[dict[str, Any]]:
    answer = cluster.client().request(
        "GET", "/api/v1/namespaces/default/pods", query={"labelSelector": LABELS}
    )
    assert answer.status == 200, answer.text
    items: list[dict[str, Any]] = answer.json["items"]
    return items


def phase(pod: dict[str, Any]) -> str:
    value: str = pod["status"].get("phase", "")
    return value


def unschedulable_message(pod: dict[str, Any]) -> str:
    for condition in pod["status"].get("conditions", []):
        if condition["type"] == "PodScheduled" and condition["status"] == "False":
            message: str = condition.get("message", "")
            return message
    return ""


def wait_split(cluster: Cluster, timeout: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Wait for one replica Running (and Ready) and one Pending with the scheduler's verdict."""

    def split() -> tuple[dict[str, Any], dict[str, Any]] | None:
        items = pods(cluster)
        running = [p for p in items if phase(p) == "Running" and ready(p)]
        pending = [p for p in items if phase(p) == "Pending" and unschedulable_message(p)]
        if len(items) == 2 and len(running) == 1 and len(pending) == 1:
            return running[0], pending[0]
        return None

    try:
        return wait_for("one replica Running and one unschedulable", split, timeout)
    except E2EError as error:
        summary = [(p["metadata"]["name"], phase(p), unschedulable_message(p)) for p in pods(cluster)]
        raise AssertionError(f"{error}: {summary}\n{cluster.logs()}") from None


def ready(pod: dict[str, Any]) -> bool:
    statuses = pod["status"].get("containerStatuses", [])
    return bool(statuses) and all(s["ready"] for s in statuses)


def get_pod(cluster: Cluster, name: str, namespace: str = "default") -> dict[str, Any]:
    return cluster.client().get("v1", "Pod", name, namespace)


def exec_env(cluster: Cluster, pod: dict[str, Any]) -> list[str]:
    """``kubectl exec <pod> -- env | sort``, the Spookd variables of it (API server → kubelet → runc)."""
    done = cluster.shell(f"kubectl exec {pod['metadata']['name']} -- env | sort")
    return [line for line in done.stdout.splitlines() if line.startswith("EXAMPLECOM_")]


def allocated(pod: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    status = pod["status"]["containerStatuses"][0].get("allocatedResourcesStatus", [])
    return {
        entry["name"]: sorted((r["resourceID"], r.get("health", "")) for r in entry.get("resources", []))
        for entry in status
    }


def node_capacity(cluster: Cluster) -> dict[str, str]:
    """``kubectl get nodes -o jsonpath='{.items[0].status.capacity}'``."""
    done = cluster.shell("kubectl get nodes -o jsonpath='{.items[0].status.capacity}'")
    capacity: dict[str, str] = json.loads(done.stdout)
    return capacity


def wait_capacity(cluster: Cluster, widgets: str, thingamajigs: str, timeout: float = 60) -> dict[str, Any]:
    def advertised() -> dict[str, Any] | None:
        status = cluster.node()["status"]
        want = {"example.com/widget": widgets, "example.com/thingamajig": thingamajigs}
        ok = all(
            status["capacity"].get(k) == v and status["allocatable"].get(k) == v for k, v in want.items()
        )
        return status if ok else None

    try:
        return wait_for(f"capacity widget={widgets} thingamajig={thingamajigs}", advertised, timeout, 0.1)
    except E2EError as error:
        raise AssertionError(
            f"{error}; node status capacity: {cluster.node()['status']['capacity']}"
        ) from None


def kubelet_devices(cluster: Cluster) -> dict[str, list[str]]:
    """The devices the kubelet holds as allocatable (PodResources GetAllocatableResources)."""
    binary = gobuild.build("podresources-list")
    done = cluster.node_command(
        [str(binary), "-socket", "/var/lib/kubelet/pod-resources/kubelet.sock", "-method", "allocatable"]
    )
    answer = json.loads(done.stdout)
    devices: dict[str, list[str]] = {}
    for entry in answer.get("devices") or []:
        devices.setdefault(entry["resource_name"], []).extend(entry.get("device_ids") or [])
    return {name: sorted(ids) for name, ids in devices.items()}


def rows(table: str) -> list[list[str]]:
    """The data rows of a ``kubectl get`` table, split into columns."""
    return [line.split() for line in table.splitlines()[1:] if line.strip()]


def log_time(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(record["time"])


def container_id(status: dict[str, Any]) -> str:
    """The runtime's ID of a container status (``containerd://<id>``)."""
    runtime, _, identifier = str(status["containerID"]).partition("://")
    assert runtime == "containerd", status
    assert identifier, status
    return identifier


# -- the node ----------------------------------------------------------------------------


def test_containerd_2_and_runc_run_the_local_image_by_hand(cluster: Cluster) -> None:
    cluster.start_runtime()
    lines = cluster.smoke_output.splitlines()
    assert lines[:2] == ["hello from runc", "0"], cluster.smoke_output
    assert int(lines[2]) > 0  # it ran in its own cgroups
    version = cluster.containerd.ctr("version").stdout
    assert f"Version:  {containerd.VERSION.removeprefix('v')}\n" in version.split("Server:")[1], version


def test_the_spookd_image_is_built_from_the_containerfile_and_runs(cluster: Cluster) -> None:
    cluster.start_runtime()
    assert cluster.image is not None
    listed = cluster.containerd.ctr("images", "list", "--quiet").stdout.split()
    assert spookd_image.IMAGE in listed
    # The image's own entrypoint, under containerd 2 and runc, read-only root, its default user.
    name = f"spookd-e2e-image-{os.getpid()}-{time.monotonic_ns()}"
    done = cluster.containerd.ctr(
        "run", "--rm", "--read-only", spookd_image.IMAGE, name,
        "/opt/spookd/bin/python", "-c",
        "import os, spookd, kubernetes_asyncio; print(spookd.__version__, os.getuid())",
        timeout=120,
    )  # fmt: skip
    assert done.stdout.split() == ["0.1.0", "65532"], done.stdout + done.stderr


def test_the_kubelet_registers_a_ready_node(cluster: Cluster) -> None:
    cluster.start_node()
    node = cluster.node()
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.37.2"
    assert info["containerRuntimeVersion"] == f"containerd://{containerd.VERSION.removeprefix('v')}"
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses == {"InternalIP": NODE_IP, "Hostname": NODE_NAME}


def test_the_kubernetes_service_leads_to_the_api_server(cluster: Cluster) -> None:
    cluster.start_node()
    service = cluster.client().get("v1", "Service", "kubernetes", "default")
    assert service["spec"]["clusterIP"] == "10.0.0.1"
    slices = cluster.kubectl(
        "get", "endpointslices", "-l", "kubernetes.io/service-name=kubernetes", "-o", "json"
    ).stdout
    endpoints = [e["addresses"] for s in json.loads(slices)["items"] for e in s["endpoints"]]
    assert endpoints == [[HOST_IP]]
    rules = cluster.node_command(["nft", "list", "table", "ip", "kube-proxy"]).stdout
    assert "10.0.0.1" in rules, rules
    assert f"dnat to {HOST_IP}:" in rules, rules


def test_a_static_pod_runs_and_kubectl_logs_reads_it(cluster: Cluster) -> None:
    cluster.start_node()
    STATIC_PODS.mkdir(parents=True, exist_ok=True)
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "static-smoke", "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "c", "image": images.BUSYBOX, "command": ["sh", "-c", "echo static up; sleep 3600"]}
            ],
        },
    }
    path = STATIC_PODS / "static-smoke.yaml"
    path.write_text(yaml.safe_dump(manifest))
    mirror = f"static-smoke-{NODE_NAME}"

    def running() -> dict[str, Any] | None:
        answer = cluster.client().request("GET", f"/api/v1/namespaces/default/pods/{mirror}")
        ok = answer.status == 200 and phase(answer.json) == "Running"
        return answer.json if ok else None

    try:
        pod = wait_for("the static pod's mirror pod to be Running", running, 90)
        assert pod["status"]["podIP"].startswith("10.244.0."), pod["status"]
        logs = wait_for(
            "its output through kubectl logs",
            lambda: cluster.kubectl("logs", mirror, check=False).stdout or None,
            30,
        )
        assert logs == "static up\n"
    finally:
        path.unlink()

    def removed() -> bool | None:
        answer = cluster.client().request("GET", f"/api/v1/namespaces/default/pods/{mirror}")
        return True if answer.status == 404 else None

    wait_for("the static pod to be removed", removed, 60)


# -- the original's walkthrough, typed ----------------------------------------------------


def test_kubectl_apply_creates_the_plugins_objects(cluster: Cluster) -> None:
    cluster.start_spookd()
    assert cluster.spookd_apply_output.splitlines() == [
        "serviceaccount/spookd created",
        "configmap/spookd-config created",
        "role.rbac.authorization.k8s.io/watch-configmaps created",
        "rolebinding.rbac.authorization.k8s.io/watch-configmaps created",
        "daemonset.apps/spookd created",
    ]


def test_the_spookd_pod_is_running_and_ready(cluster: Cluster) -> None:
    cluster.start_spookd()
    cluster.kubectl("-n", "kube-system", "rollout", "status", "daemonset/spookd", "--timeout=120s")
    table = cluster.kubectl("-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/name=spookd").stdout
    [row] = rows(table)
    assert row[1:4] == ["1/1", "Running", "0"], table
    pod = cluster.spookd_pod()
    manifest = next(
        obj for obj in yaml.safe_load_all(PLUGIN_MANIFEST.read_text()) if obj and obj["kind"] == "DaemonSet"
    )
    [container] = pod["spec"]["containers"]
    assert container["image"] == spookd_image.IMAGE
    # Ready only after the kubelet's readiness probe (/readyz) passed; the liveness probe is the manifest's.
    conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conditions["Ready"] == "True", pod["status"]
    wanted = manifest["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        got = {k: container[probe]["httpGet"][k] for k in ("path", "port")}
        assert got == wanted[probe]["httpGet"], container[probe]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # What the process got from the kubelet: NODE_NAME from the Downward API, the
    # ServiceAccount token mounted, the kubernetes Service's address, no capabilities.
    env = cluster.kubectl("-n", "kube-system", "exec", pod["metadata"]["name"], "--", "env").stdout
    assert f"NODE_NAME={NODE_NAME}" in env.splitlines()
    assert "KUBERNETES_SERVICE_HOST=10.0.0.1" in env.splitlines()
    status = cluster.kubectl(
        "-n", "kube-system", "exec", pod["metadata"]["name"], "--",
        "/opt/spookd/bin/python", "-c",
        "import pathlib; t = pathlib.Path('/var/run/secrets/kubernetes.io/serviceaccount/token');"
        " print(t.read_text().count('.'));"
        " print(*[l for l in open('/proc/self/status') if l.startswith(('CapEff', 'CapBnd'))], sep='')",
    ).stdout.split()  # fmt: skip
    assert status == ["2", "CapEff:", "0000000000000000", "CapBnd:", "0000000000000000"], status
    write = cluster.kubectl(
        "-n", "kube-system", "exec", pod["metadata"]["name"], "--",
        "/opt/spookd/bin/python", "-c", "open('/opt/x', 'w')", check=False,
    )  # fmt: skip
    assert "Read-only file system" in write.stderr, write.stderr


def test_kubectl_logs_shows_spookd_started_registered_and_reporting(cluster: Cluster) -> None:
    cluster.start_spookd()
    records = cluster.spookd_records()
    messages = [(r["message"], r.get("resource")) for r in records]
    for resource in ("example.com/widget", "example.com/thingamajig"):
        for message in ("server started", "registered", "devices reported"):
            assert (message, resource) in messages, messages
    assert any(r["message"] == "using in-cluster credentials" for r in records), messages
    assert any(r.get("node") == NODE_NAME or NODE_NAME in str(r.values()) for r in records), records[:5]
    # From the process's first line to both resources registered with the kubelet.
    first = log_time(records[0])
    registered = [log_time(r) for r in records if r["message"] == "registered"]
    seconds = (max(registered[:2]) - first).total_seconds()
    cluster.timings["spookd pod: first log line to both registered"] = seconds
    status = cluster.spookd_pod()["status"]["containerStatuses"][0]
    requested = evidence.container_start_requested(cluster.containerd.log, container_id(status))
    kubelet_saw = evidence.registrations_after(LOGS / "kubelet.log", requested, SPOOKD_RESOURCES)
    since_start = (max(kubelet_saw.values()) - requested).total_seconds()
    cluster.timings["spookd pod: StartContainer to the kubelet's both registrations"] = since_start
    assert seconds < 10, records[:10]


def test_the_node_capacity_lists_the_devices(cluster: Cluster) -> None:
    cluster.start_spookd()
    wait_capacity(cluster, "1", "1")
    capacity = node_capacity(cluster)
    assert capacity["example.com/widget"] == "1"
    assert capacity["example.com/thingamajig"] == "1"


def test_one_replica_runs_and_one_is_pending_for_want_of_a_widget(
    cluster: Cluster, walkthrough: dict[str, Any]
) -> None:
    assert walkthrough["applied"] == "deployment.apps/spookd-test created\n"
    table = cluster.kubectl("get", "pods", "-l", LABELS).stdout
    states = sorted(row[1:3] for row in rows(table))
    assert states == [["0/1", "Pending"], ["1/1", "Running"]], table
    events = cluster.kubectl("get", "events", "--field-selector", "reason=FailedScheduling").stdout
    assert "Insufficient example.com/widget" in events, events
    message = unschedulable_message(get_pod(cluster, walkthrough["pending"]["metadata"]["name"]))
    assert "Insufficient example.com/widget" in message, message
    running = get_pod(cluster, walkthrough["running"]["metadata"]["name"])
    assert running["spec"]["nodeName"] == NODE_NAME


def test_kubectl_exec_env_shows_exactly_the_spookd_variables(
    cluster: Cluster, walkthrough: dict[str, Any]
) -> None:
    assert exec_env(cluster, walkthrough["running"]) == expected_env("0001", "A1234", WIDGET)


def test_kubectl_logs_of_the_deployment_shows_the_same_variables(
    cluster: Cluster, walkthrough: dict[str, Any]
) -> None:
    done = cluster.shell("kubectl logs deploy/spookd-test | grep EXAMPLECOM_")
    assert done.stdout.splitlines() == expected_env("0001", "A1234", WIDGET)


def test_allocated_resources_status_shows_the_devices_healthy(
    cluster: Cluster, walkthrough: dict[str, Any]
) -> None:
    def reported() -> dict[str, list[tuple[str, str]]] | None:
        return allocated(get_pod(cluster, walkthrough["running"]["metadata"]["name"])) or None

    assert wait_for("allocatedResourcesStatus", reported, 30) == {
        "example.com/widget": [("0001", "Healthy")],
        "example.com/thingamajig": [("A1234", "Healthy")],
    }


def test_a_kubelet_restart_keeps_the_device_and_the_capacity_returns(
    cluster: Cluster, walkthrough: dict[str, Any]
) -> None:
    name = walkthrough["running"]["metadata"]["name"]
    before = get_pod(cluster, name)["status"]["containerStatuses"][0]
    spookd_before = cluster.spookd_pod()
    registrations = sum(1 for r in cluster.spookd_records() if r.get("message") == "registered")
    cluster.restart_kubelet()

    def reregistered() -> int | None:
        count = sum(1 for r in cluster.spookd_records() if r.get("message") == "registered")
        return count if count >= registrations + 2 else None

    wait_for("Spookd to register both resources again", reregistered, 30)
    wait_capacity(cluster, "1", "1")
    after = get_pod(cluster, name)["status"]["containerStatuses"][0]
    assert (after["containerID"], after["restartCount"]) == (before["containerID"], before["restartCount"])
    assert "running" in after["state"], after["state"]
    spookd_after = cluster.spookd_pod()
    assert spookd_after["metadata"]["uid"] == spookd_before["metadata"]["uid"]
    assert spookd_after["status"]["containerStatuses"][0]["restartCount"] == 0
    assert exec_env(cluster, get_pod(cluster, name)) == expected_env("0001", "A1234", WIDGET)
    assert allocated(get_pod(cluster, name)) == {
        "example.com/widget": [("0001", "Healthy")],
        "example.com/thingamajig": [("A1234", "Healthy")],
    }
    # Still exactly one holder: the other replica is still unschedulable.
    pending = get_pod(cluster, walkthrough["pending"]["metadata"]["name"])
    assert phase(pending) == "Pending", pending["status"]
    assert "nodeName" not in pending["spec"], pending["spec"]


def edited_configmap(devices: list[dict[str, Any]]) -> str:
    """deploy/'s ConfigMap with its mapping's devices replaced, as ``kubectl edit`` leaves it."""
    configmap = next(
        obj for obj in yaml.safe_load_all(PLUGIN_MANIFEST.read_text()) if obj and obj["kind"] == "ConfigMap"
    )
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    assert config["deviceMapping"][0]["hosts"] == [NODE_NAME]
    config["deviceMapping"][0]["devices"] = devices
    configmap["data"]["config.yaml"] = yaml.safe_dump(config, sort_keys=False)
    return yaml.safe_dump(configmap, sort_keys=False)


def test_an_edited_configmap_adds_devices_and_starts_the_pending_replica(
    cluster: Cluster, walkthrough: dict[str, Any]
) -> None:
    devices: list[dict[str, Any]] = [
        {"resourceName": "example.com/widget", "instanceID": "0001", "env": {"IP": "192.168.0.200", "PORT": 12345}},
        {"resourceName": "example.com/thingamajig", "instanceID": "A1234"},
        {"resourceName": "example.com/widget", "instanceID": "0002", "env": {"IP": "192.168.0.201", "PORT": 12345}},
        {"resourceName": "example.com/thingamajig", "instanceID": "B5678"},
    ]  # fmt: skip
    spookd_before = cluster.spookd_pod()
    pending_name = walkthrough["pending"]["metadata"]["name"]
    want = {"example.com/widget": ["0001", "0002"], "example.com/thingamajig": ["A1234", "B5678"]}
    assert kubelet_devices(cluster) != want
    began = time.monotonic()
    applied = cluster.kubectl("apply", "-f", "-", input=edited_configmap(devices)).stdout
    stored = time.monotonic()  # the API server has the new ConfigMap
    assert applied == "configmap/spookd-config configured\n"
    wait_for(
        "the kubelet to hold the new devices", lambda: kubelet_devices(cluster) == want or None, 10, 0.05
    )
    held = time.monotonic() - stored
    cluster.timings["kubectl apply (the command itself)"] = stored - began
    cluster.timings["configmap stored to kubelet holding the devices"] = held
    wait_capacity(cluster, "2", "2", timeout=60)
    cluster.timings["configmap stored to Node capacity 2"] = time.monotonic() - stored
    assert held < 1.0, f"the kubelet held the new devices only {held:.2f} s after the ConfigMap changed"

    def started() -> dict[str, Any] | None:
        pod = get_pod(cluster, pending_name)
        return pod if phase(pod) == "Running" and ready(pod) else None

    pod = wait_for("the pending replica to run", started, 90)
    assert exec_env(cluster, pod) == expected_env("0002", "B5678", {"IP": "192.168.0.201", "PORT": "12345"})
    first = get_pod(cluster, walkthrough["running"]["metadata"]["name"])
    assert exec_env(cluster, first) == expected_env("0001", "A1234", WIDGET)
    # No Spookd restart: the same pod, its container never restarted.
    spookd_after = cluster.spookd_pod()
    assert spookd_after["metadata"]["uid"] == spookd_before["metadata"]["uid"]
    assert spookd_after["status"]["containerStatuses"][0]["restartCount"] == 0


def test_a_containerd_restart_keeps_every_container_and_its_devices(
    cluster: Cluster, walkthrough: dict[str, Any]
) -> None:
    names = [p["metadata"]["name"] for p in pods(cluster)]
    before = {n: get_pod(cluster, n)["status"]["containerStatuses"][0] for n in names}
    spookd_before = cluster.spookd_pod()["status"]["containerStatuses"][0]
    capacity = {k: v for k, v in cluster.node()["status"]["capacity"].items() if k.startswith("example.com/")}
    cluster.timings["containerd restart to Node Ready"] = cluster.restart_containerd()
    for name in names:
        after = get_pod(cluster, name)["status"]["containerStatuses"][0]
        assert (after["containerID"], after["restartCount"]) == (
            before[name]["containerID"],
            before[name]["restartCount"],
        )
    spookd_after = cluster.spookd_pod()["status"]["containerStatuses"][0]
    assert (spookd_after["containerID"], spookd_after["restartCount"]) == (spookd_before["containerID"], 0)
    wait_capacity(cluster, capacity["example.com/widget"], capacity["example.com/thingamajig"])
    # exec goes through the new containerd to the old shim.
    assert exec_env(cluster, get_pod(cluster, walkthrough["running"]["metadata"]["name"])) == expected_env(
        "0001", "A1234", WIDGET
    )


def test_spookd_keeps_serving_after_minutes_of_watching(
    cluster: Cluster, walkthrough: dict[str, Any]
) -> None:
    """A daemon's life is longer than a test's: the API server sends watch bookmarks every minute."""
    pod = cluster.spookd_pod()
    started = datetime.fromisoformat(pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
    age = (datetime.now(started.tzinfo) - started).total_seconds()
    time.sleep(max(0.0, 100 - age))
    pod = cluster.spookd_pod()
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0, pod["status"]
    widgets: list[dict[str, Any]] = [
        {"resourceName": "example.com/widget", "instanceID": f"000{i}", "env": {"IP": f"192.168.0.20{i - 1}"}}
        for i in (1, 2, 3)
    ]
    thingamajigs = [{"resourceName": "example.com/thingamajig", "instanceID": i} for i in ("A1234", "B5678")]
    cluster.kubectl("apply", "-f", "-", input=edited_configmap(widgets + thingamajigs))
    wait_capacity(cluster, "3", "2", timeout=30)


# -- Helm, live, on the same node ------------------------------------------------------------

HELM_DEVICES: list[dict[str, Any]] = [
    {"resourceName": "example.com/widget", "instanceID": "0001", "env": {"IP": "192.168.0.200", "PORT": 12345}},
    {"resourceName": "example.com/widget", "instanceID": "0002", "env": {"IP": "192.168.0.201", "PORT": 12345}},
    {"resourceName": "example.com/thingamajig", "instanceID": "A1234"},
    {"resourceName": "example.com/thingamajig", "instanceID": "B5678"},
]  # fmt: skip


def helm_values(path: Path, devices: list[dict[str, Any]]) -> Path:
    """A values file carrying ``deviceMapping`` (and stale-resource cleanup on)."""
    values = {
        "deviceMapping": [{"hosts": [NODE_NAME], "devices": devices}],
        "rbac": {"cleanupStaleResources": True},
    }
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def spookd_pods(cluster: Cluster) -> list[dict[str, Any]]:
    answer = cluster.client().request(
        "GET", "/api/v1/namespaces/kube-system/pods", query={"labelSelector": "app.kubernetes.io/name=spookd"}
    )
    items: list[dict[str, Any]] = answer.json.get("items", [])
    return items


@pytest.fixture(scope="module")
def helm_release(
    cluster: Cluster, walkthrough: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The manifest's objects deleted, then ``helm install`` of helm/spookd with a values file."""
    from support.helm import helm_binary

    helm = str(helm_binary())
    deleted = cluster.kubectl("delete", "-f", "deploy/spookd-device-plugin.yaml").stdout
    wait_for("the manifest's Spookd pod to be gone", lambda: not spookd_pods(cluster) or None, 60)
    values = helm_values(tmp_path_factory.mktemp("helm") / "values.yaml", HELM_DEVICES)
    installed = cluster.shell(
        [helm, "install", "spookd", "helm/spookd", "-n", "kube-system", "-f", str(values), "--wait", "--timeout=180s"]
    ).stdout  # fmt: skip
    # helm --wait counts a DaemonSet ready with maxUnavailable (1) pods not ready, so on
    # one node it returns at once: wait as an operator does.
    cluster.kubectl("-n", "kube-system", "rollout", "status", "daemonset/spookd", "--timeout=120s")
    return {"helm": helm, "values": values, "deleted": deleted, "installed": installed}


def test_helm_install_serves_the_node_after_the_manifest_is_deleted(
    cluster: Cluster, helm_release: dict[str, Any]
) -> None:
    assert 'daemonset.apps "spookd" deleted' in helm_release["deleted"], helm_release["deleted"]
    assert "STATUS: deployed" in helm_release["installed"], helm_release["installed"]
    table = cluster.kubectl("-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/name=spookd").stdout
    [row] = rows(table)
    assert row[1:4] == ["1/1", "Running", "0"], table
    wait_capacity(cluster, "2", "2")
    # Both consumers kept their devices while no Spookd ran.
    envs = sorted(exec_env(cluster, pod) for pod in pods(cluster))
    assert envs == sorted(
        [
            expected_env("0001", "A1234", WIDGET),
            expected_env("0002", "B5678", {"IP": "192.168.0.201", "PORT": "12345"}),
        ]
    )


def test_helm_upgrade_with_a_changed_mapping_applies_without_a_pod_restart(
    cluster: Cluster, helm_release: dict[str, Any]
) -> None:
    before = cluster.spookd_pod()
    third = {"resourceName": "example.com/widget", "instanceID": "0003", "env": {"IP": "192.168.0.202"}}
    values = helm_values(helm_release["values"].parent / "values-2.yaml", [*HELM_DEVICES, third])
    cluster.shell(
        [helm_release["helm"], "upgrade", "spookd", "helm/spookd", "-n", "kube-system", "-f", str(values), "--wait"]
    )  # fmt: skip
    helm_release["values"] = values
    wait_capacity(cluster, "3", "2", timeout=30)
    after = cluster.spookd_pod()
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0
    daemonset = cluster.client().get("apps/v1", "DaemonSet", "spookd", "kube-system")
    assert daemonset["metadata"]["generation"] == 1, "the pod template must not change with the mapping"


def test_helm_upgrade_of_the_image_tag_rolls_the_pod_never_two_at_once(
    cluster: Cluster, helm_release: dict[str, Any]
) -> None:
    # A second tag of the same image, as a new release would be (nothing can be pushed).
    cluster.containerd.ctr("images", "tag", "--force", spookd_image.IMAGE, "ghcr.io/spookd/spookd:0.1.1")
    old = cluster.spookd_pod()
    seen: list[tuple[float, int]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            running = [
                p["metadata"]["uid"]
                for p in spookd_pods(cluster)
                if any("running" in s.get("state", {}) for s in p["status"].get("containerStatuses", []))
            ]
            seen.append((time.monotonic(), len(running)))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        cluster.shell(
            [
                helm_release["helm"], "upgrade", "spookd", "helm/spookd", "-n", "kube-system",
                "-f", str(helm_release["values"]), "--set", "image.tag=0.1.1", "--wait", "--timeout=180s",
            ]
        )  # fmt: skip
        new = wait_for(
            "the new pod Ready",
            lambda: next(
                (
                    p
                    for p in spookd_pods(cluster)
                    if p["metadata"]["uid"] != old["metadata"]["uid"]
                    and ready(p)
                    and len(spookd_pods(cluster)) == 1
                ),
                None,
            ),
            120,
        )
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert max(count for _, count in seen) == 1, "two Spookd containers ran at once on the node"
    assert new["spec"]["containers"][0]["image"] == "ghcr.io/spookd/spookd:0.1.1"
    logs = cluster.kubectl("-n", "kube-system", "logs", new["metadata"]["name"]).stdout
    (LOGS / "spookd-after-upgrade.log").write_text(logs)
    records = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    registered = sorted(log_time(r) for r in records if r["message"] == "registered")
    assert len(registered) >= 2, records
    cluster.timings["helm upgrade: new pod's first log line to both registered"] = (
        registered[1] - log_time(records[0])
    ).total_seconds()
    # Registered within 5 s of the new container's start, both moments from the node's
    # components: containerd receiving StartContainer (before runc starts the process,
    # so the interval is never under-measured) and the kubelet receiving each Register.
    status = new["status"]["containerStatuses"][0]
    requested = evidence.container_start_requested(cluster.containerd.log, container_id(status))
    kubelet_saw = evidence.registrations_after(LOGS / "kubelet.log", requested, SPOOKD_RESOURCES)
    seconds = (max(kubelet_saw.values()) - requested).total_seconds()
    cluster.timings["helm upgrade: StartContainer to the kubelet's both registrations"] = seconds
    assert seconds < 5, f"registered {seconds:.3f} s after StartContainer: {kubelet_saw}, {records[:12]}"
    wait_capacity(cluster, "3", "2", timeout=60)
    envs = sorted(exec_env(cluster, pod) for pod in pods(cluster))
    assert envs == sorted(
        [
            expected_env("0001", "A1234", WIDGET),
            expected_env("0002", "B5678", {"IP": "192.168.0.201", "PORT": "12345"}),
        ]
    )


def test_helm_uninstall_removes_the_sockets_and_drops_the_capacity_to_zero(
    cluster: Cluster, helm_release: dict[str, Any]
) -> None:
    began = time.monotonic()
    cluster.shell([helm_release["helm"], "uninstall", "spookd", "-n", "kube-system", "--wait"])
    wait_for("Spookd's pod to be gone", lambda: not spookd_pods(cluster) or None, 60)
    listing = cluster.node_command(["ls", "/var/lib/kubelet/device-plugins"]).stdout.split()
    assert [name for name in listing if name.startswith("spookd-")] == [], listing
    # Spookd's last word on each stream is "no devices": capacity 0 at the kubelet's next
    # node-status update (10 s here), not the count it last heard for 5 minutes.
    wait_capacity(cluster, "0", "0", timeout=3 * NODE_STATUS_UPDATE)
    cluster.timings["helm uninstall to Node capacity 0"] = time.monotonic() - began
    # The consumers keep running with their devices.
    envs = sorted(exec_env(cluster, pod) for pod in pods(cluster))
    assert envs == sorted(
        [
            expected_env("0001", "A1234", WIDGET),
            expected_env("0002", "B5678", {"IP": "192.168.0.201", "PORT": "12345"}),
        ]
    )


def test_after_uninstall_the_kubelet_keeps_the_zero_key_for_its_grace_period(
    cluster: Cluster, helm_release: dict[str, Any]
) -> None:
    """The zero-valued key is the kubelet's: removed during its 5-minute grace, it comes back."""
    client = cluster.client()
    path = client.path("v1", "Node", None, NODE_NAME) + "/status"
    pointer = "/status/capacity/example.com~1widget"
    patch = [{"op": "test", "path": pointer, "value": "0"}, {"op": "remove", "path": pointer}]
    answer = client.request("PATCH", path, body=patch, content_type="application/json-patch+json")
    assert answer.status == 200, answer.text
    assert "example.com/widget" not in answer.json["status"]["capacity"]

    def written_back() -> str | None:
        value: str | None = cluster.node()["status"]["capacity"].get("example.com/widget")
        return value

    assert wait_for("the kubelet to write the key back", written_back, 3 * NODE_STATUS_UPDATE) == "0"
