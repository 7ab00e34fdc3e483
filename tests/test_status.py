"""`spookd status` against a real kube-apiserver: nodes, their reported health, Lease holders, pods."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.apiserver import ApiClient, ApiServer

from spookd.kube.leaserecords import DEVICE_LABEL, LABELS, lease_name

pytestmark = [pytest.mark.apiserver]

OSC = "skao.int/oscilloscope"
WIDGET = "example.com/widget"
_names = itertools.count()


def _node(api: ApiClient, name: str, labels: dict[str, str], capacity: dict[str, str]) -> None:
    body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}
    assert api.create(body).status == 201
    status = {
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "ok",
                    "lastHeartbeatTime": "2026-12-01T00:00:00Z",
                    "lastTransitionTime": "2026-12-01T00:00:00Z",
                }
            ],
        }
    }
    path = api.path("v1", "Node", None, name) + "/status"
    answer = api.request("PATCH", path, body=status, content_type="application/merge-patch+json")
    assert answer.status == 200, answer.text


def _pod(api: ApiClient, namespace: str, name: str, node: str, resource: str) -> None:
    # No controller manager here: the namespace's default ServiceAccount is made by hand.
    api.ensure(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": namespace},
        }
    )
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": False,
            "containers": [{"name": "c", "image": "busybox", "resources": {"limits": {resource: "1"}}}],
        },
    }
    answer = api.create(body)
    assert answer.status == 201, answer.text


def spookd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spookd", "status", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"},
        check=False,
    )


def test_status_lists_devices_nodes_health_and_holders(apiserver: ApiServer, tmp_path: Path) -> None:
    api = apiserver.client()
    tag = f"{next(_names)}-{int(time.time() * 1000) % 100000}"
    a, b, c = f"st-a-{tag}", f"st-b-{tag}", f"st-c-{tag}"
    namespace = f"status-{tag}"
    api.ensure({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    _node(api, a, {}, {OSC: "1", WIDGET: "1"})
    _node(api, b, {}, {OSC: "1"})
    _node(api, c, {"lab": "status-" + tag}, {WIDGET: "1"})
    # B reports the oscilloscope Unhealthy (allocatable 0): A holds it.
    path = api.path("v1", "Node", None, b) + "/status"
    patch = {"status": {"allocatable": {OSC: "0"}}}
    assert api.request("PATCH", path, body=patch, content_type="application/merge-patch+json").status == 200
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease_name(OSC, "0001"),
            "namespace": namespace,
            "labels": {**LABELS, DEVICE_LABEL: lease_name(OSC, "0001").removeprefix("spookd-")},
            "annotations": {"spookd.skao.int/resource": OSC, "spookd.skao.int/device": "0001"},
        },
        "spec": {
            "holderIdentity": a,
            "leaseDurationSeconds": 15,
            "renewTime": "2026-12-01T10:00:00.000000Z",
        },
    }
    assert api.create(lease).status == 201
    _pod(api, namespace, "scope-user", a, OSC)
    _pod(api, namespace, "widget-user", c, WIDGET)
    _pod(api, namespace, "bystander", b, WIDGET)
    config = tmp_path / "c.yaml"
    config.write_text(
        "exclusive: true\n"
        "deviceMapping:\n"
        f"  - hosts: [{a}, {b}, gone-{tag}]\n"
        "    devices:\n"
        f'      - {{resourceName: {OSC}, instanceID: "0001"}}\n'
        f'      - {{resourceName: {OSC}, instanceID: "0002"}}\n'
        "  - nodeSelector:\n"
        f'      matchLabels: {{lab: "status-{tag}"}}\n'
        "    devices:\n"
        f'      - {{resourceName: {WIDGET}, instanceID: "w1"}}\n'
    )
    common = [
        "--config",
        str(config),
        "--lease-namespace",
        namespace,
        "--kubeconfig",
        str(apiserver.kubeconfig),
    ]
    result = spookd(*common, "--output", "json")
    assert result.returncode == 0, result.stderr
    devices = {(d["resourceName"], d["instanceID"]): d for d in json.loads(result.stdout)["devices"]}
    held = devices[(OSC, "0001")]
    assert held["exclusive"] is True
    assert [(n["name"], n["ready"], n["allocatable"], n["capacity"]) for n in held["nodes"]] == [
        (a, "True", 1, 1),
        (b, "True", 0, 1),
    ]
    assert held["missingNodes"] == [f"gone-{tag}"]
    assert held["holder"]["node"] == a
    assert held["holder"]["lease"] == f"{namespace}/{lease_name(OSC, '0001')}"
    assert held["pods"] == [{"namespace": namespace, "name": "scope-user", "node": a}]
    free = devices[(OSC, "0002")]
    assert free["holder"] is None
    assert free["pods"] == []
    selected = devices[(WIDGET, "w1")]
    assert selected["exclusive"] is True, "a selector mapping's devices are shared under exclusive"
    assert [n["name"] for n in selected["nodes"]] == [c]
    assert selected["holder"] is None
    text = spookd(*common)
    assert text.returncode == 0, text.stderr
    assert f"{OSC} 0001 (exclusive)" in text.stdout
    assert f"held by {a} (Lease {namespace}/" in text.stdout
    assert f"node {b}: Ready=True, 0/1 allocatable" in text.stdout
    assert f"pods requesting {OSC}: {namespace}/scope-user on {a}" in text.stdout


def test_status_node_local_device_lists_the_pods_on_its_node(apiserver: ApiServer, tmp_path: Path) -> None:
    api = apiserver.client()
    tag = f"{next(_names)}-{int(time.time() * 1000) % 100000}"
    node, namespace = f"st-l-{tag}", f"status-l-{tag}"
    api.ensure({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    _node(api, node, {}, {WIDGET: "1"})
    _pod(api, namespace, "user", node, WIDGET)
    configmap: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "spookd-config", "namespace": namespace},
        "data": {
            "config.yaml": f"deviceMapping:\n  - hosts: [{node}]\n    devices:\n"
            f'      - {{resourceName: {WIDGET}, instanceID: "1"}}\n'
        },
    }
    assert api.create(configmap).status == 201
    result = spookd(
        "--configmap",
        f"{namespace}/spookd-config",
        "--kubeconfig",
        str(apiserver.kubeconfig),
        "--output",
        "json",
    )
    assert result.returncode == 0, result.stderr
    (device,) = json.loads(result.stdout)["devices"]
    assert device["exclusive"] is False
    assert "holder" not in device
    assert device["pods"] == [{"namespace": namespace, "name": "user", "node": node}]
    missing = spookd("--configmap", f"{namespace}/nothing", "--kubeconfig", str(apiserver.kubeconfig))
    assert missing.returncode == 2
    assert "the API server answered 404" in missing.stderr
