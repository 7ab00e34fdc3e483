"""DRA mode's allocation with the real kube-scheduler and resource-claim controller (no kubelet).

Nodes are API objects only (their not-ready taint cleared); ``spookd publish`` writes
the slices and classes; the scheduler built from k8s.io/kubernetes v1.37.2 allocates
and binds; the controller manager's resourceclaim controller makes claims from
templates and frees the claims of deleted pods; deployment and replicaset
controllers turn a Deployment into a pod. What the tests read is what the scheduler
wrote: pod bindings, ResourceClaim allocations, the PodScheduled condition.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import gobuild
from support.apiserver import ApiClient, ApiServer
from support.drapublisher import Publisher, new_namespace, remove_everything, wait_until

pytestmark = [pytest.mark.apiserver]

NODES = ("h1", "h2", "h3")
CLAIMS = "/apis/resource.k8s.io/v1"


class Components:
    """kube-scheduler and kube-controller-manager as subprocesses of the test."""

    def __init__(self, apiserver: ApiServer, workdir: Path) -> None:
        binary = gobuild.build("e2enode")
        common = [f"--kubeconfig={apiserver.kubeconfig}", "--leader-elect=false", "--secure-port=0", "--v=2"]
        self.logs = [
            (workdir / "kube-scheduler.log").open("ab"),
            (workdir / "kube-controller-manager.log").open("ab"),
        ]
        self.processes = [
            subprocess.Popen(
                [str(binary), "kube-scheduler", *common],
                stdout=subprocess.DEVNULL,
                stderr=self.logs[0],
            ),
            subprocess.Popen(
                [
                    str(binary),
                    "kube-controller-manager",
                    *common,
                    "--controllers=resourceclaim-controller,deployment-controller,replicaset-controller",
                ],
                stdout=subprocess.DEVNULL,
                stderr=self.logs[1],
            ),
        ]

    def close(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=30)
        for log in self.logs:
            log.close()


@pytest.fixture(scope="module")
def cluster(apiserver: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiClient]:
    api = apiserver.client()
    for name in NODES:
        api.ensure(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            }
        )
        path = f"/api/v1/nodes/{name}"
        status = {
            "status": {
                "capacity": {"cpu": "4", "memory": "8Gi", "pods": "200"},
                "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "200"},
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "Test", "message": "no kubelet"}
                ],
            }
        }
        merge = "application/merge-patch+json"
        assert api.request("PATCH", path + "/status", body=status, content_type=merge).status == 200
        assert api.request("PATCH", path, body={"spec": {"taints": []}}, content_type=merge).status == 200
    components = Components(apiserver, tmp_path_factory.mktemp("components"))
    try:
        yield api
    finally:
        components.close()


@pytest.fixture
def publishing(apiserver: ApiServer, tmp_path: Path) -> Iterator[tuple[Path, list[Publisher]]]:
    started: list[Publisher] = []
    yield tmp_path / "config.yaml", started
    remove_everything(apiserver, started)


def publish(
    apiserver: ApiServer, config: Path, text: str, started: list[Publisher], namespace: str
) -> Publisher:
    config.write_text(text)
    publisher = Publisher(apiserver, config, namespace, "only", config.with_suffix(".log"))
    started.append(publisher)
    return publisher


def pod(
    name: str, namespace: str, *, limits: dict[str, str] | None = None, claim: str | None = None
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "c", "image": "registry.k8s.io/pause:3.10"}
    spec: dict[str, Any] = {"containers": [container], "automountServiceAccountToken": False}
    if limits:
        container["resources"] = {"limits": limits}
    if claim:
        container["resources"] = {"claims": [{"name": "dev"}]}
        spec["resourceClaims"] = [{"name": "dev", "resourceClaimTemplateName": claim}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def pods(api: ApiClient, namespace: str) -> list[dict[str, Any]]:
    answer = api.request("GET", f"/api/v1/namespaces/{namespace}/pods")
    assert answer.status == 200
    return [p for p in answer.json["items"] if not p["metadata"].get("deletionTimestamp")]


def claims(api: ApiClient, namespace: str) -> list[dict[str, Any]]:
    answer = api.request("GET", f"{CLAIMS}/namespaces/{namespace}/resourceclaims")
    assert answer.status == 200
    items: list[dict[str, Any]] = answer.json["items"]
    return items


def allocated_devices(api: ApiClient, namespace: str) -> list[str]:
    out: list[str] = []
    for claim in claims(api, namespace):
        allocation = (claim.get("status") or {}).get("allocation")
        if allocation:
            out.extend(r["pool"] + "/" + r["device"] for r in allocation["devices"]["results"])
    return out


def force_delete(api: ApiClient, namespace: str, name: str) -> None:
    answer = api.request(
        "DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body={"gracePeriodSeconds": 0}
    )
    assert answer.status in (200, 202, 404)


WIDGETS = """\
deviceMapping:
  - hosts: [h1, h2]
    devices:
      - resourceName: example.com/widget
        instanceID: "shared"
        env: {BAND: "low"}
"""


def test_a_deployment_pod_gets_a_device_through_the_class_mapping(
    apiserver: ApiServer, cluster: ApiClient, publishing: tuple[Path, list[Publisher]]
) -> None:
    namespace = new_namespace(cluster, "dra-deploy")
    config, started = publishing
    publish(apiserver, config, WIDGETS, started, namespace)
    wait_until(
        lambda: cluster.request("GET", f"{CLAIMS}/deviceclasses/widget.example.com").status == 200,
        what="the DeviceClass",
    )
    template = pod("x", namespace, limits={"example.com/widget": "1"})["spec"]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "user", "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "user"}},
            "template": {"metadata": {"labels": {"app": "user"}}, "spec": template},
        },
    }
    assert cluster.create(deployment).status == 201
    wait_until(lambda: any(p["spec"].get("nodeName") for p in pods(cluster, namespace)), 60, "the pod bound")
    (bound,) = pods(cluster, namespace)
    assert bound["spec"]["nodeName"] in ("h1", "h2")
    (claim,) = claims(cluster, namespace)
    assert "extended-resources" in claim["metadata"]["name"]
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    assert result["driver"] == "spookd.skao.int"
    assert result["device"].startswith("widget-shared")


def test_a_device_shared_by_two_hosts_is_allocated_once_among_100_racing_pods(
    apiserver: ApiServer, cluster: ApiClient, publishing: tuple[Path, list[Publisher]]
) -> None:
    namespace = new_namespace(cluster, "dra-race")
    config, started = publishing
    publish(apiserver, config, WIDGETS.replace("shared", "raced"), started, namespace)
    wait_until(
        lambda: cluster.request("GET", f"{CLAIMS}/deviceclasses/widget.example.com").status == 200,
        what="the DeviceClass",
    )
    for i in range(100):
        assert cluster.create(pod(f"p{i:03d}", namespace, limits={"example.com/widget": "1"})).status == 201
    holders: list[str] = []
    for _round in range(3):
        wait_until(lambda: any(p["spec"].get("nodeName") for p in pods(cluster, namespace)), 120, "a holder")
        time.sleep(2)
        now = pods(cluster, namespace)
        bound = [p for p in now if p["spec"].get("nodeName")]
        assert len(bound) == 1, [p["metadata"]["name"] for p in bound]
        assert bound[0]["spec"]["nodeName"] in ("h1", "h2")
        assert len(allocated_devices(cluster, namespace)) == 1
        assert all(p["status"].get("phase") == "Pending" for p in now)
        waiting = [p for p in now if not p["spec"].get("nodeName")]
        reasons = {
            c.get("reason"): c.get("message", "")
            for p in waiting
            for c in p["status"].get("conditions", [])
            if c["type"] == "PodScheduled"
        }
        assert set(reasons) == {"Unschedulable"}, reasons
        assert "cannot allocate all claims" in reasons["Unschedulable"]
        holders.append(bound[0]["metadata"]["name"])
        force_delete(cluster, namespace, bound[0]["metadata"]["name"])
    assert len(set(holders)) == 3
    # The waiting pods would keep the scheduler busy in the next tests.
    cluster.request("DELETE", f"/api/v1/namespaces/{namespace}/pods", body={"gracePeriodSeconds": 0})


def test_a_selector_mappings_device_goes_only_to_a_node_with_the_label_and_once(
    apiserver: ApiServer, cluster: ApiClient, publishing: tuple[Path, list[Publisher]]
) -> None:
    namespace = new_namespace(cluster, "dra-labels")
    config, started = publishing
    merge = "application/merge-patch+json"
    labelled = {"metadata": {"labels": {"spookd-test/lab": "one"}}}
    assert cluster.request("PATCH", "/api/v1/nodes/h2", body=labelled, content_type=merge).status == 200
    try:
        text = (
            "deviceMapping:\n"
            "  - nodeSelector:\n"
            "      matchLabels: {spookd-test/lab: one}\n"
            "    devices:\n"
            '      - {resourceName: example.com/widget, instanceID: "lab1"}\n'
        )
        publish(apiserver, config, text, started, namespace)
        wait_until(
            lambda: cluster.request("GET", f"{CLAIMS}/deviceclasses/widget.example.com").status == 200,
            what="the DeviceClass",
        )
        for name in ("first", "second"):
            assert cluster.create(pod(name, namespace, limits={"example.com/widget": "1"})).status == 201
        wait_until(
            lambda: any(p["spec"].get("nodeName") for p in pods(cluster, namespace)), 60, "a pod bound"
        )
        time.sleep(2)
        bound = [p for p in pods(cluster, namespace) if p["spec"].get("nodeName")]
        assert [p["spec"]["nodeName"] for p in bound] == ["h2"]
        (device,) = allocated_devices(cluster, namespace)
        assert device.startswith("selector-")
        assert device.endswith("/widget-lab1")
    finally:
        unlabelled = {"metadata": {"labels": {"spookd-test/lab": None}}}
        cluster.request("PATCH", "/api/v1/nodes/h2", body=unlabelled, content_type=merge)


def test_a_claim_template_with_cel_on_an_env_attribute_gets_exactly_that_device(
    apiserver: ApiServer, cluster: ApiClient, publishing: tuple[Path, list[Publisher]]
) -> None:
    namespace = new_namespace(cluster, "dra-cel")
    config, started = publishing
    text = (
        "deviceMapping:\n"
        "  - hosts: [h3]\n"
        "    devices:\n"
        '      - {resourceName: example.com/widget, instanceID: "a", env: {BAND: "low"}}\n'
        '      - {resourceName: example.com/widget, instanceID: "b", env: {BAND: "high"}}\n'
        '      - {resourceName: example.com/widget, instanceID: "c", env: {BAND: "mid"}}\n'
    )
    publish(apiserver, config, text, started, namespace)
    template = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": "high-band", "namespace": namespace},
        "spec": {
            "spec": {
                "devices": {
                    "requests": [
                        {
                            "name": "w",
                            "exactly": {
                                "deviceClassName": "widget.example.com",
                                "selectors": [
                                    {
                                        "cel": {
                                            "expression": 'device.attributes["env.spookd.skao.int"].BAND == "high"'
                                        }
                                    }
                                ],
                            },
                        }
                    ]
                }
            }
        },
    }
    assert cluster.create(template).status == 201
    wait_until(
        lambda: cluster.request("GET", f"{CLAIMS}/deviceclasses/widget.example.com").status == 200,
        what="the DeviceClass",
    )
    assert cluster.create(pod("user", namespace, claim="high-band")).status == 201
    try:
        wait_until(
            lambda: any(p["spec"].get("nodeName") for p in pods(cluster, namespace)), 60, "the pod bound"
        )
    except AssertionError:
        raise AssertionError(
            json.dumps([pods(cluster, namespace), claims(cluster, namespace)])[:3000]
        ) from None
    (bound,) = pods(cluster, namespace)
    assert bound["spec"]["nodeName"] == "h3"
    assert allocated_devices(cluster, namespace) == ["h3/widget-b"]


def test_an_unhealthy_device_is_not_allocated_until_it_is_healthy_again(
    apiserver: ApiServer, cluster: ApiClient, publishing: tuple[Path, list[Publisher]]
) -> None:
    namespace = new_namespace(cluster, "dra-health")
    config, started = publishing
    with socket.socket() as probe_port:
        probe_port.bind(("127.0.0.1", 0))
        port = probe_port.getsockname()[1]
    text = (
        "deviceMapping:\n"
        "  - hosts: [h1]\n"
        "    devices:\n"
        "      - resourceName: example.com/probed\n"
        '        instanceID: "p0"\n'
        f'        healthCheck: {{tcp: "127.0.0.1:{port}", interval: 200ms, timeout: 200ms, failureThreshold: 1}}\n'
    )
    publish(apiserver, config, text, started, namespace)

    def taints() -> list[Any] | None:
        listing = cluster.request(
            "GET", f"{CLAIMS}/resourceslices", query={"fieldSelector": "spec.driver=spookd.skao.int"}
        ).json["items"]
        devices = [d for s in listing for d in s["spec"].get("devices", [])]
        return list(devices[0].get("taints", [])) if devices else None

    wait_until(lambda: bool(taints()), what="the device tainted")
    wait_until(
        lambda: cluster.request("GET", f"{CLAIMS}/deviceclasses/probed.example.com").status == 200,
        what="the DeviceClass",
    )
    assert cluster.create(pod("user", namespace, limits={"example.com/probed": "1"})).status == 201
    time.sleep(3)
    (waiting,) = pods(cluster, namespace)
    assert not waiting["spec"].get("nodeName")
    assert waiting["status"].get("phase") == "Pending"
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen(16)
        wait_until(lambda: taints() == [], what="the taint removed")
        wait_until(
            lambda: any(p["spec"].get("nodeName") for p in pods(cluster, namespace)), 60, "the pod bound"
        )
    assert allocated_devices(cluster, namespace) == ["h1/probed-p0"]
