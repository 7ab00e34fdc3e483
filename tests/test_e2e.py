"""The original's walkthrough on a real single-node cluster (issue 10, docs/e2e.md).

kube-apiserver on etcd, kube-controller-manager, kube-scheduler and the kubelet built
from k8s.io/kubernetes; containerd and runc from Debian; images made from Debian's
busybox-static; Spookd as a process on the node, configured by the ConfigMap of
deploy/spookd-device-plugin.yaml. The tests follow the stages of the set-up, so a
broken stage fails its own test first: the runtime by hand, the node, a static pod,
the capacity, then deploy/spookd-test-deployment.yaml as the original's README shows
it, a kubelet restart and a ConfigMap change.

Runs only when asked (it needs root, installs Debian packages and takes minutes):
``SPOOKD_E2E=1 pytest tests/test_e2e.py`` (the ``e2e`` nox session). When asked, a
missing prerequisite is a failure, never a skip.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

if os.environ.get("SPOOKD_E2E") != "1":
    pytest.skip("the end-to-end walkthrough runs with SPOOKD_E2E=1 (nox -s e2e)", allow_module_level=True)

from e2e import images
from e2e.cluster import LOGS, NODE_NAME, STATIC_PODS, Cluster
from e2e.host import E2EError, wait_for

# Cold Go builds of the API server and the node binary come first; nothing is timed.
pytestmark = pytest.mark.timeout(1800)

REPO = Path(__file__).resolve().parent.parent
TEST_DEPLOYMENT = REPO / "deploy" / "spookd-test-deployment.yaml"
LABELS = "app.kubernetes.io/name=spookd-test"

WIDGET = {"IP": "192.168.0.200", "PORT": "12345"}


def expected_env(widget: str, thingamajig: str, widget_env: dict[str, str]) -> dict[str, str]:
    """SPEC §5: exactly these variables for one widget and one thingamajig."""
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
    return env


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The cluster, prepared (packages, builds); each test starts the stages it needs."""
    began = time.monotonic()
    cluster = Cluster()
    try:
        cluster.prepare()
        yield cluster
    finally:
        cluster.down()
        cluster.timings["total"] = time.monotonic() - began
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"{name:>32}: {seconds:7.1f} s" for name, seconds in cluster.timings.items()]
        report = "\n".join(["e2e timings (logs in " + str(LOGS) + "):", *lines, *cluster.notes])
        (LOGS / "timings.txt").write_text(report + "\n")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line("")
                for line in report.splitlines():
                    reporter.write_line(line)


@pytest.fixture(scope="module")
def walkthrough(cluster: Cluster) -> dict[str, Any]:
    """Spookd serving, and the test deployment applied (its image name the only change)."""
    cluster.start_spookd()
    deployment = yaml.safe_load(TEST_DEPLOYMENT.read_text())
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["image"] for c in containers] == ["busybox:1.37"], (
        "the test deployment changed: update this test"
    )
    containers[0]["image"] = images.BUSYBOX
    created = cluster.client().create(deployment)
    assert created.status == 201, created.text
    running, pending = wait_split(cluster, timeout=120)
    return {"deployment": created.json, "running": running, "pending": pending}


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
        running = [p for p in items if phase(p) == "Running"]
        pending = [p for p in items if phase(p) == "Pending" and unschedulable_message(p)]
        if len(items) == 2 and len(running) == 1 and len(pending) == 1:
            return running[0], pending[0]
        return None

    try:
        return wait_for("one replica Running and one unschedulable", split, timeout)
    except E2EError as error:
        summary = [(p["metadata"]["name"], phase(p), unschedulable_message(p)) for p in pods(cluster)]
        raise AssertionError(f"{error}: {summary}\n{cluster.logs()}") from None


def get_pod(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.client().get("v1", "Pod", name, "default")


def env_of(cluster: Cluster, pod: dict[str, Any]) -> dict[str, str]:
    """The Spookd variables the container printed (``env | sort``)."""

    def printed() -> str | None:
        text = cluster.container_log(get_pod(cluster, pod["metadata"]["name"]), "show-env")
        return text if "PATH=" in text else None

    text = wait_for("the container's env output", printed, 30)
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key: value for key, value in pairs if key.startswith("EXAMPLECOM_")}


def allocated(pod: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    status = pod["status"]["containerStatuses"][0].get("allocatedResourcesStatus", [])
    return {
        entry["name"]: sorted((r["resourceID"], r.get("health", "")) for r in entry.get("resources", []))
        for entry in status
    }


def patch_config(cluster: Cluster, devices: list[dict[str, Any]]) -> None:
    """Replace the walkthrough mapping's devices in the ConfigMap (as `kubectl edit` would)."""
    config = {"deviceMapping": [{"hosts": [NODE_NAME], "devices": devices}]}
    body = {"data": {"config.yaml": yaml.safe_dump(config, sort_keys=False)}}
    path = "/api/v1/namespaces/kube-system/configmaps/spookd-config"
    answer = cluster.client().request("PATCH", path, body=body, content_type="application/merge-patch+json")
    assert answer.status == 200, answer.text


def wait_capacity(cluster: Cluster, widgets: str, thingamajigs: str, timeout: float = 60) -> dict[str, Any]:
    def advertised() -> dict[str, Any] | None:
        status = cluster.node()["status"]
        want = {"example.com/widget": widgets, "example.com/thingamajig": thingamajigs}
        ok = all(
            status["capacity"].get(k) == v and status["allocatable"].get(k) == v for k, v in want.items()
        )
        return status if ok else None

    try:
        return wait_for(f"capacity widget={widgets} thingamajig={thingamajigs}", advertised, timeout)
    except E2EError as error:
        raise AssertionError(
            f"{error}; node status capacity: {cluster.node()['status']['capacity']}"
        ) from None


# -- the stages ------------------------------------------------------------------------


def test_containerd_and_runc_run_the_local_image_by_hand(cluster: Cluster) -> None:
    cluster.start_runtime()
    lines = cluster.smoke_output.splitlines()
    assert lines[:2] == ["hello from runc", "0"], cluster.smoke_output
    assert int(lines[2]) > 0  # it ran in its own cgroups


def test_the_kubelet_registers_a_ready_node(cluster: Cluster) -> None:
    cluster.start_node()
    info = cluster.node()["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.37.2"
    assert info["containerRuntimeVersion"].startswith("containerd://1.")


def test_a_static_pod_runs_on_the_node(cluster: Cluster) -> None:
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
        assert pod["status"]["podIP"], pod["status"]  # an address from the bridge network
        assert wait_for("its output", lambda: cluster.container_log(pod, "c") or None, 30) == "static up"
    finally:
        path.unlink()

    def removed() -> bool | None:
        answer = cluster.client().request("GET", f"/api/v1/namespaces/default/pods/{mirror}")
        return True if answer.status == 404 else None

    wait_for("the static pod to be removed", removed, 60)


def test_the_node_capacity_lists_the_devices(cluster: Cluster) -> None:
    cluster.start_spookd()
    status = wait_capacity(cluster, "1", "1")
    assert status["capacity"]["example.com/widget"] == "1"
    assert status["capacity"]["example.com/thingamajig"] == "1"


# -- the original's README ---------------------------------------------------------------


def test_one_replica_runs_and_one_is_pending_for_want_of_a_widget(
    cluster: Cluster, walkthrough: dict[str, Any]
) -> None:
    message = unschedulable_message(get_pod(cluster, walkthrough["pending"]["metadata"]["name"]))
    assert "Insufficient example.com/widget" in message, message
    events = cluster.client().request(
        "GET",
        "/api/v1/namespaces/default/events",
        query={
            "fieldSelector": f"reason=FailedScheduling,involvedObject.name={walkthrough['pending']['metadata']['name']}"
        },
    )
    assert any("Insufficient example.com/widget" in e["message"] for e in events.json["items"]), events.text
    running = get_pod(cluster, walkthrough["running"]["metadata"]["name"])
    assert running["spec"]["nodeName"] == NODE_NAME
    assert running["status"]["containerStatuses"][0]["ready"] is True


def test_the_running_container_gets_exactly_the_spookd_variables(
    cluster: Cluster, walkthrough: dict[str, Any]
) -> None:
    assert env_of(cluster, walkthrough["running"]) == expected_env("0001", "A1234", WIDGET)


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
    assert env_of(cluster, get_pod(cluster, name)) == expected_env("0001", "A1234", WIDGET)
    assert allocated(get_pod(cluster, name)) == {
        "example.com/widget": [("0001", "Healthy")],
        "example.com/thingamajig": [("A1234", "Healthy")],
    }
    # Still exactly one holder: the other replica is still unschedulable.
    pending = get_pod(cluster, walkthrough["pending"]["metadata"]["name"])
    assert phase(pending) == "Pending", pending["status"]
    assert "nodeName" not in pending["spec"], pending["spec"]


def test_a_second_widget_and_thingamajig_in_the_configmap_start_the_pending_replica(
    cluster: Cluster, walkthrough: dict[str, Any]
) -> None:
    widget = {
        "resourceName": "example.com/widget",
        "instanceID": "0001",
        "env": {"IP": "192.168.0.200", "PORT": 12345},
    }
    thingamajig = {"resourceName": "example.com/thingamajig", "instanceID": "A1234"}
    second_widget = {
        "resourceName": "example.com/widget",
        "instanceID": "0002",
        "env": {"IP": "192.168.0.201", "PORT": 12345},
    }
    pending_name = walkthrough["pending"]["metadata"]["name"]

    # A second widget alone is not enough: each replica also needs a thingamajig.
    patch_config(cluster, [widget, second_widget, thingamajig])
    wait_capacity(cluster, "2", "1")

    def only_thingamajig_missing() -> str | None:
        message = unschedulable_message(get_pod(cluster, pending_name))
        return (
            message if "Insufficient example.com/thingamajig" in message and "widget" not in message else None
        )

    wait_for("the scheduler to find only a thingamajig missing", only_thingamajig_missing, 60)

    patch_config(
        cluster,
        [
            widget,
            second_widget,
            thingamajig,
            {"resourceName": "example.com/thingamajig", "instanceID": "B5678"},
        ],
    )
    wait_capacity(cluster, "2", "2")

    def started() -> dict[str, Any] | None:
        pod = get_pod(cluster, pending_name)
        statuses = pod["status"].get("containerStatuses", [])
        return pod if phase(pod) == "Running" and statuses and statuses[0]["ready"] else None

    pod = wait_for("the pending replica to run", started, 90)
    assert env_of(cluster, pod) == expected_env("0002", "B5678", {"IP": "192.168.0.201", "PORT": "12345"})
    first = get_pod(cluster, walkthrough["running"]["metadata"]["name"])
    assert env_of(cluster, first) == expected_env("0001", "A1234", WIDGET)


def test_spookd_keeps_serving_after_minutes_of_watching(
    cluster: Cluster, walkthrough: dict[str, Any]
) -> None:
    """A daemon's life is longer than a test's: the API server sends watch bookmarks every minute."""
    assert cluster.spookd is not None
    began = cluster.spookd.started
    time.sleep(max(0.0, began + 100 - time.monotonic()))
    try:
        cluster.spookd.check()
    except E2EError as error:
        raise AssertionError(f"Spookd died while watching its ConfigMap: {error}") from None
    widgets = [
        {"resourceName": "example.com/widget", "instanceID": f"000{i}", "env": {"IP": f"192.168.0.20{i - 1}"}}
        for i in (1, 2, 3)
    ]
    thingamajigs = [{"resourceName": "example.com/thingamajig", "instanceID": i} for i in ("A1234", "B5678")]
    patch_config(cluster, widgets + thingamajigs)
    wait_capacity(cluster, "3", "2", timeout=30)
