"""Opt-in stale-resource cleanup against a real kube-apiserver (SPEC §10)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import SpookdProcess
from support.apiserver import ApiClient, ApiServer
from support.nodeharness import NodeHarness

pytestmark = [pytest.mark.apiserver, pytest.mark.harness]

SERVED = """\
deviceMapping:
  - hosts: [{node}]
    devices:
      - {{resourceName: example.com/widget, instanceID: "1"}}
      - {{resourceName: example.com/busy, instanceID: "1"}}
      - {{resourceName: example.com/kept, instanceID: "1"}}
"""
KEPT_ONLY = """\
deviceMapping:
  - hosts: [{node}]
    devices:
      - {{resourceName: example.com/kept, instanceID: "1"}}
"""


def make_node(api: ApiClient, name: str) -> None:
    body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
    assert api.create(body).status == 201
    quantities = {
        "cpu": "2",
        "example.com/widget": "0",  # withdrawn by Spookd, left at 0 by the kubelet: stale
        "example.com/busy": "3",  # withdrawn by Spookd but served by another plugin now
        "example.com/foreign": "0",  # never served by Spookd
        "example.com/kept": "1",  # still served
    }
    status = {"status": {"capacity": quantities, "allocatable": quantities}}
    path = api.path("v1", "Node", None, name) + "/status"
    answer = api.request("PATCH", path, body=status, content_type="application/merge-patch+json")
    assert answer.status == 200, answer.text


def capacity(api: ApiClient, name: str) -> dict[str, Any]:
    node = api.get("v1", "Node", name)
    return dict(node["status"]["capacity"])


def run_scenario(
    apiserver: ApiServer, node: NodeHarness, spookd: SpookdProcess, name: str, *flags: str
) -> ApiClient:
    api = apiserver.client()
    make_node(api, name)
    spookd.node_name = name
    spookd.write(SERVED.format(node=name))
    spookd.start(*flags, kubeconfig=apiserver.kubeconfig)
    node.wait_for(
        lambda r: r.is_registered("example.com/widget") and r.is_registered("example.com/busy"), timeout=20
    )
    spookd.write(KEPT_ONLY.format(node=name))
    node.wait_for(lambda r: r.capacity("example.com/widget") == 0 and r.capacity("example.com/busy") == 0)
    return api


def test_stale_resource_at_zero_is_removed_and_nothing_else(
    apiserver: ApiServer, node: NodeHarness, spookd: SpookdProcess, plugin_dir: Path
) -> None:
    api = run_scenario(apiserver, node, spookd, "lab-node-a", "--cleanup-stale-resources")
    deadline = time.monotonic() + 15
    while "example.com/widget" in capacity(api, "lab-node-a"):
        assert time.monotonic() < deadline, spookd.log_text()
        time.sleep(0.2)
    node_status = api.get("v1", "Node", "lab-node-a")["status"]
    assert "example.com/widget" not in node_status["allocatable"]
    assert node_status["capacity"]["example.com/busy"] == "3"
    assert node_status["capacity"]["example.com/foreign"] == "0"
    assert node_status["capacity"]["example.com/kept"] == "1"
    assert node_status["capacity"]["cpu"] == "2"
    assert any(r["message"] == "removed stale resource from the node status" for r in spookd.records())


def test_cleanup_is_off_by_default(apiserver: ApiServer, node: NodeHarness, spookd: SpookdProcess) -> None:
    api = run_scenario(apiserver, node, spookd, "lab-node-b")
    time.sleep(3)
    assert capacity(api, "lab-node-b")["example.com/widget"] == "0"
