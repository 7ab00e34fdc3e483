"""Mappings with a nodeSelector against a real kube-apiserver and the real device manager.

Spookd serves a file (``--config``) and reads its own Node's labels with a
ServiceAccount token whose ClusterRole names only that Node (``resourceNames``): the
least privilege that docs/operator-guide.md describes. Labels are changed on the Node
object in the API server as an operator would with ``kubectl label``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import SpookdProcess
from support.apiserver import ApiClient, ApiServer
from support.nodeharness import NodeHarness, Resources

pytestmark = [pytest.mark.apiserver, pytest.mark.harness]

WIDGET = "example.com/widget"
SCOPE = "example.com/scope"
_names = itertools.count()


def config(gpu: str = "true") -> str:
    return (
        "deviceMapping:\n"
        "  - hosts: [nobody]\n"
        "    nodeSelector:\n"
        "      matchLabels: {example.com/lab: lab2}\n"
        f'      matchExpressions: [{{key: gpu, operator: In, values: ["{gpu}"]}}]\n'
        "    devices:\n"
        f'      - {{resourceName: {SCOPE}, instanceID: "s1"}}\n'
        "  - hosts: [{node}]\n"
        "    devices:\n"
        f'      - {{resourceName: {WIDGET}, instanceID: "0001"}}\n'
    )


PLAIN = "deviceMapping:\n  - hosts: [{node}]\n    devices:\n" + (
    f'      - {{resourceName: {WIDGET}, instanceID: "0001"}}\n'
)


@dataclass
class LabelledNode:
    name: str
    api: ApiClient
    kubeconfig: Path

    def label(self, **labels: str | None) -> None:
        """Set (or with None remove) labels on the Node, as `kubectl label` does."""
        path = self.api.path("v1", "Node", None, self.name)
        body = {"metadata": {"labels": labels}}
        answer = self.api.request("PATCH", path, body=body, content_type="application/merge-patch+json")
        assert answer.status == 200, answer.text


def _service_account(api: ApiClient, apiserver: ApiServer, name: str, *, node: str | None) -> str:
    """A ServiceAccount token; with ``node``, bound to get/list/watch on that one Node."""
    namespace = "default"
    api.ensure(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}}
    )
    if node is not None:
        api.ensure(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": name},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["nodes"],
                        "resourceNames": [node],
                        "verbs": ["get", "list", "watch"],
                    }
                ],
            }
        )
        api.ensure(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
            }
        )
    return apiserver.service_account_token(namespace, name)


@pytest.fixture
def labelled(apiserver: ApiServer, spookd: SpookdProcess, tmp_path: Path) -> Iterator[LabelledNode]:
    """A Node object named like Spookd's node, and a kubeconfig allowed to read only it."""
    api = apiserver.client()
    name = f"lbl-{next(_names)}-{int(time.time() * 1000) % 100000}"
    answer = api.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    assert answer.status == 201, answer.text
    token = _service_account(api, apiserver, f"spookd-{name}", node=name)
    spookd.node_name = name
    try:
        yield LabelledNode(name, api, apiserver.write_kubeconfig(tmp_path / "kubeconfig", token))
    finally:
        api.request("DELETE", api.path("v1", "Node", None, name))


def scope_served(r: Resources) -> bool:
    return r.is_registered(SCOPE) and r.capacity(SCOPE) == 1 and r.allocatable(SCOPE) == 1


def scope_withdrawn(r: Resources) -> bool:
    return r.capacity(SCOPE) == 0 and r.capacity(WIDGET) == 1


def test_label_added_resource_appears_label_removed_resource_withdrawn(
    labelled: LabelledNode, node: NodeHarness, spookd: SpookdProcess
) -> None:
    labelled.label(**{"example.com/lab": "lab2"})
    spookd.write(config().replace("{node}", labelled.name))
    spookd.start(kubeconfig=labelled.kubeconfig)
    node.wait_for(lambda r: r.is_registered(WIDGET) and r.capacity(WIDGET) == 1, timeout=20)
    assert node.resources().capacity(SCOPE) == 0, "gpu=true is missing: the selector must not match"

    seconds = []
    for _ in range(2):
        started = time.monotonic()
        labelled.label(gpu="true")
        node.wait_for(scope_served, timeout=10)
        seconds.append(time.monotonic() - started)
        started = time.monotonic()
        labelled.label(gpu=None)
        node.wait_for(scope_withdrawn, timeout=10)
        seconds.append(time.monotonic() - started)
    print(f"label change to the kubelet's view: {', '.join(f'{s:.2f}' for s in seconds)} s")

    # A label that does not take part changes nothing that is served.
    labelled.label(gpu="true")
    node.wait_for(scope_served, timeout=10)
    applied = spookd.log_text().count('"config applied"')
    labelled.label(unrelated="x")
    wait_for_log(spookd, "unrelated=x")
    assert spookd.log_text().count('"config applied"') == applied
    assert "not allowed to read Node" not in spookd.log_text()
    assert spookd.stop() == 0


def test_selector_no_longer_matching_after_a_config_edit(
    labelled: LabelledNode, node: NodeHarness, spookd: SpookdProcess
) -> None:
    labelled.label(**{"example.com/lab": "lab2", "gpu": "true"})
    spookd.write(config().replace("{node}", labelled.name))
    spookd.start(kubeconfig=labelled.kubeconfig)
    node.wait_for(scope_served, timeout=20)

    spookd.write(config(gpu="false").replace("{node}", labelled.name))
    node.wait_for(scope_withdrawn, timeout=10)
    labelled.label(gpu="false")
    node.wait_for(scope_served, timeout=10)
    assert spookd.stop() == 0


def test_no_node_access_without_a_selector_and_a_clear_error_without_rbac(
    apiserver: ApiServer, node: NodeHarness, spookd: SpookdProcess, tmp_path: Path
) -> None:
    api = apiserver.client()
    name = f"lbl-{next(_names)}-{int(time.time() * 1000) % 100000}"
    assert api.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}).status == 201
    # A ServiceAccount without any permission on nodes.
    token = _service_account(api, apiserver, f"spookd-nonodes-{name}", node=None)
    spookd.node_name = name
    spookd.write(PLAIN.replace("{node}", name))
    spookd.start(kubeconfig=apiserver.write_kubeconfig(tmp_path / "kubeconfig", token))
    node.wait_for(lambda r: r.is_registered(WIDGET) and r.capacity(WIDGET) == 1, timeout=20)
    spookd.write(PLAIN.replace("{node}", name).replace('"0001"', '"0002"'))
    wait_for_log(spookd, '"config applied"', count=2)
    log = spookd.log_text()
    assert "listing Node" not in log, "no mapping uses labels: the Node must not be read"
    assert "following this node's labels" not in log

    spookd.write(config().replace("{node}", name))
    wait_for_log(spookd, "not allowed to read Node")
    assert "spookd-node-labels" in spookd.log_text(), "the error names the ClusterRole to bind"
    assert node.resources().capacity(WIDGET) == 1, "what does not need labels keeps serving"
    assert node.resources().capacity(SCOPE) == 0

    spookd.write(PLAIN.replace("{node}", name))
    wait_for_log(spookd, "not reading the Node")
    assert spookd.stop() == 0
    api.request("DELETE", api.path("v1", "Node", None, name))


def test_list_and_watch_by_name_is_what_resource_names_allow(
    labelled: LabelledNode, apiserver: ApiServer
) -> None:
    """The least privilege of docs/operator-guide.md holds on the real API server."""
    token = _service_account(labelled.api, apiserver, f"spookd-{labelled.name}", node=labelled.name)
    reader = apiserver.client(token=token)
    by_name = {"fieldSelector": f"metadata.name={labelled.name}"}

    def status(path: str, query: dict[str, str] | None = None) -> int:
        return reader.request("GET", path, query=query).status

    assert status(f"/api/v1/nodes/{labelled.name}") == 200
    assert status("/api/v1/nodes", by_name) == 200
    watch = {**by_name, "watch": "1", "timeoutSeconds": "1", "allowWatchBookmarks": "true"}
    assert status("/api/v1/nodes", watch) == 200
    assert status("/api/v1/nodes") == 403
    assert status("/api/v1/nodes", {"fieldSelector": "metadata.name=someone-else"}) == 403
    assert status("/api/v1/nodes", {"labelSelector": "gpu=true"}) == 403
    patch = reader.request(
        "PATCH",
        f"/api/v1/nodes/{labelled.name}",
        body={"metadata": {"labels": {"x": "y"}}},
        content_type="application/merge-patch+json",
    )
    assert patch.status == 403


def wait_for_log(spookd: SpookdProcess, text: str, *, count: int = 1, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while spookd.log_text().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not logged {count} time(s):\n{spookd.log_text()}"
        time.sleep(0.05)
