"""DRA mode on the node (SPEC §11) against the kubelet's own plugin manager and DRA manager.

`spookd run --dra` serves the registration socket and the DRA v1 service; the
harness (tests/go/cmd/draharness) runs the kubelet's plugin watcher, registration
and DRA manager code against a real kube-apiserver, where the test creates the
ResourceSlices (as the publisher would), the ResourceClaims with their allocation
(as the scheduler would) and the pods. A prepare answers the CDI device IDs each
container gets; the CDI spec files Spookd wrote must carry exactly the §5
environment.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import walkthrough
from conftest import SpookdProcess
from grpclib.client import Channel
from support.apiserver import ApiClient, ApiServer
from support.draharness import DraHarness

from spookd._proto.k8s.io.kubelet.pkg.apis.dra import v1 as dra
from spookd.draslices import DRIVER

pytestmark = [pytest.mark.apiserver, pytest.mark.draharness]

NODE = "minikube"
POOL = "minikube"
CONFIG = """\
deviceMapping:
  - hosts: [minikube]
    devices:
      - {resourceName: example.com/widget, instanceID: "0001", env: {IP: 192.168.0.200, PORT: 12345}}
      - {resourceName: example.com/widget, instanceID: "0002", env: {IP: 192.168.0.201, PORT: 12346},
         deviceNodes: [{hostPath: /dev/null, containerPath: /dev/widget}],
         mounts: [{hostPath: /etc/hostname, containerPath: /etc/widget-host, readOnly: true}]}
      - {resourceName: example.com/thingamajig, instanceID: A1234}
"""
#: SPEC §5, the walkthrough: a container given widget 0001 and thingamajig A1234.
WALKTHROUGH_ENV = walkthrough.ENV
_names = itertools.count()


def eventually(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        time.sleep(0.05)


def _device(name: str, resource: str, instance: str) -> dict[str, Any]:
    return {
        "name": name,
        # The attribute names spookd publish writes (spookd.draslices).
        "attributes": {
            f"{DRIVER}/resource": {"string": resource},
            f"{DRIVER}/instanceID": {"string": instance},
        },
    }


def _node_selector() -> dict[str, Any]:
    return {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [NODE]}]}]
    }


@dataclass
class Node:
    """One node: Spookd in DRA mode and the kubelet's DRA code, sharing a kubelet directory."""

    api: ApiClient
    apiserver: ApiServer
    namespace: str
    kubelet_dir: Path
    cdi_dir: Path
    state_dir: Path
    spookd: SpookdProcess
    workdir: Path
    harness: DraHarness | None = None

    def start_spookd(self) -> None:
        self.spookd.start(
            "--dra", "--kubelet-dir", str(self.kubelet_dir), "--cdi-dir", str(self.cdi_dir),
            kubeconfig=self.apiserver.kubeconfig,
        )  # fmt: skip

    def start_kubelet(self, state_dir: Path | None = None) -> DraHarness:
        if self.harness is not None:
            self.harness.close()
        self.harness = DraHarness.start(
            self.apiserver.kubeconfig, self.kubelet_dir, state_dir or self.state_dir,
            node=NODE, driver=DRIVER, log_path=self.workdir / "draharness.log",
        )  # fmt: skip
        self.harness.wait_registered()
        return self.harness

    def claim(self, requests: Mapping[str, list[str]]) -> dict[str, Any]:
        """A ResourceClaim with one request per key, allocated the listed devices (not yet reserved)."""
        name = f"claim-{next(_names)}"
        spec = {
            "devices": {
                "requests": [
                    {"name": r, "exactly": {"deviceClassName": "widget", "count": len(devices)}}
                    for r, devices in requests.items()
                ]
            }
        }
        body = {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec,
        }
        created = self.api.create(body)
        assert created.status == 201, created.text
        return created.json

    def pod(
        self, claims: Mapping[str, dict[str, Any]], containers: Mapping[str, list[dict[str, str]]]
    ) -> str:
        """A pod bound to NODE using ``claims`` ({pod claim name: claim}); each claim is allocated
        and reserved for it."""
        name = f"pod-{next(_names)}"
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {
                "nodeName": NODE,
                "automountServiceAccountToken": False,
                "resourceClaims": [
                    {"name": key, "resourceClaimName": c["metadata"]["name"]} for key, c in claims.items()
                ],
                "containers": [
                    {"name": c, "image": "example.invalid/app", "resources": {"claims": refs}}
                    for c, refs in containers.items()
                ],
            },
        }
        created = self.api.create(body)
        assert created.status == 201, created.text
        return name

    def allocate(
        self, claim: dict[str, Any], pod: str, results: list[tuple[str, str]], *, driver: str = DRIVER
    ) -> dict[str, Any]:
        """Write the claim's status as the scheduler would: ``results`` = [(request, device)]."""
        pod_uid = self.api.get("v1", "Pod", pod, self.namespace)["metadata"]["uid"]
        name = claim["metadata"]["name"]
        current = self.api.get("resource.k8s.io/v1", "ResourceClaim", name, self.namespace)
        current["status"] = {
            "allocation": {
                "devices": {
                    "results": [
                        {"request": r, "driver": driver, "pool": POOL, "device": d} for r, d in results
                    ]
                },
                "nodeSelector": _node_selector(),
            },
            "reservedFor": [{"resource": "pods", "name": pod, "uid": pod_uid}],
        }
        path = self.api.path("resource.k8s.io/v1", "ResourceClaim", self.namespace, name) + "/status"
        answer = self.api.request("PUT", path, body=current)
        assert answer.status == 200, answer.text
        return answer.json

    def prepare(self, pod: str) -> dict[str, Any]:
        assert self.harness is not None
        return self.harness.request("prepare", namespace=self.namespace, pod=pod)

    def specs(self) -> dict[str, dict[str, Any]]:
        """The CDI spec files Spookd wrote, by file name."""
        return {p.name: json.loads(p.read_text()) for p in sorted(self.cdi_dir.glob("*.json"))}

    def env_of(self, cdi_ids: list[str]) -> dict[str, str]:
        """The environment CDI gives a container with these device IDs (the container edits' union)."""
        devices = {
            f"{spec['kind']}={device['name']}": device
            for spec in self.specs().values()
            for device in spec["devices"]
        }
        env: dict[str, str] = {}
        for cdi_id in cdi_ids:
            for item in devices[cdi_id]["containerEdits"]["env"]:
                key, _, value = item.partition("=")
                assert key not in env, f"{key} set twice for {cdi_ids}"
                env[key] = value
        return env


@pytest.fixture
def node(apiserver: ApiServer, tmp_path: Path) -> Iterator[Node]:
    api = apiserver.client()
    namespace = f"dra-{next(_names)}-{int(time.time() * 1000) % 100000}"
    api.ensure({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    api.ensure(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": namespace},
        }
    )
    api.ensure({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    slice_body = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{NODE}-spookd"},
        "spec": {
            "driver": DRIVER,
            "pool": {"name": POOL, "generation": 1, "resourceSliceCount": 1},
            "nodeSelector": _node_selector(),
            "devices": [
                _device("widget-0001", "example.com/widget", "0001"),
                _device("widget-0002", "example.com/widget", "0002"),
                _device("thingamajig-a1234", "example.com/thingamajig", "A1234"),
                _device("widget-0099", "example.com/widget", "0099"),
            ],
        },
    }
    api.ensure(slice_body)
    # Unix socket paths are short: a private directory under /tmp, not pytest's tmp_path.
    short = Path(tempfile.mkdtemp(prefix="dra", dir="/tmp"))
    spookd = SpookdProcess(short / "unused", tmp_path, node_name=NODE)
    spookd.write(CONFIG)
    state = Node(
        api, apiserver, namespace, short / "kubelet", short / "cdi", tmp_path / "dra-state", spookd, tmp_path
    )
    try:
        yield state
    finally:
        if state.harness is not None:
            state.harness.close()
        if spookd.process is not None and spookd.process.poll() is None:
            spookd.stop()
        shutil.rmtree(short, ignore_errors=True)
        # The API server is shared by the session: leave no slice for the publisher's tests to see.
        api.request("DELETE", f"/apis/resource.k8s.io/v1/resourceslices/{NODE}-spookd")


def test_walkthrough_pod_gets_exactly_the_device_plugin_environment(node: Node) -> None:
    node.start_spookd()
    node.start_kubelet()
    claim = node.claim({"widget": ["widget-0001"], "thing": ["thingamajig-a1234"]})
    pod = node.pod({"devices": claim}, {"app": [{"name": "devices"}], "sidecar": []})
    allocated = node.allocate(claim, pod, [("widget", "widget-0001"), ("thing", "thingamajig-a1234")])
    uid = allocated["metadata"]["uid"]

    answer = node.prepare(pod)

    assert answer.get("error") is None, answer
    assert answer["containers"] == {
        "app": sorted([f"{DRIVER}/claim={uid}-thing", f"{DRIVER}/claim={uid}-widget"]),
        "sidecar": [],
    }
    assert list(node.specs()) == [f"{DRIVER}-claim_{uid}.json"]
    assert node.env_of(answer["containers"]["app"]) == WALKTHROUGH_ENV


def test_each_request_is_numbered_on_its_own_with_device_nodes_and_mounts(node: Node) -> None:
    """Two containers, one request each (the shape of the scheduler's extended-resource claim)."""
    node.start_spookd()
    node.start_kubelet()
    claim = node.claim({"c0": ["widget-0002"], "c1": ["widget-0001"]})
    pod = node.pod(
        {"w": claim}, {"a": [{"name": "w", "request": "c0"}], "b": [{"name": "w", "request": "c1"}]}
    )
    uid = node.allocate(claim, pod, [("c0", "widget-0002"), ("c1", "widget-0001")])["metadata"]["uid"]

    answer = node.prepare(pod)

    assert answer.get("error") is None, answer
    assert answer["containers"] == {"a": [f"{DRIVER}/claim={uid}-c0"], "b": [f"{DRIVER}/claim={uid}-c1"]}
    a = node.env_of(answer["containers"]["a"])
    b = node.env_of(answer["containers"]["b"])
    assert (a["EXAMPLECOM_WIDGET_ID"], a["EXAMPLECOM_WIDGET_DEV0_IP"], a["EXAMPLECOM_WIDGET_NUM_DEVICES"]) == (
        "0002", "192.168.0.201", "1",
    )  # fmt: skip
    assert (b["EXAMPLECOM_WIDGET_ID"], b["EXAMPLECOM_WIDGET_DEV0_IP"]) == ("0001", "192.168.0.200")
    (spec,) = node.specs().values()
    edits = {d["name"]: d["containerEdits"] for d in spec["devices"]}
    assert edits[f"{uid}-c0"]["deviceNodes"] == [
        {"path": "/dev/widget", "hostPath": "/dev/null", "permissions": "rw"}
    ]
    assert edits[f"{uid}-c0"]["mounts"] == [
        {"hostPath": "/etc/hostname", "containerPath": "/etc/widget-host", "options": ["rbind", "ro"]}
    ]
    assert "deviceNodes" not in edits[f"{uid}-c1"]


def test_two_devices_of_one_request_are_dev0_and_dev1_in_id_order(node: Node) -> None:
    node.start_spookd()
    node.start_kubelet()
    claim = node.claim({"two": ["widget-0002", "widget-0001"]})
    pod = node.pod({"w": claim}, {"app": [{"name": "w"}]})
    node.allocate(claim, pod, [("two", "widget-0002"), ("two", "widget-0001")])

    answer = node.prepare(pod)

    assert answer.get("error") is None, answer
    env = node.env_of(answer["containers"]["app"])
    assert env["EXAMPLECOM_WIDGET_NUM_DEVICES"] == "2"
    assert (env["EXAMPLECOM_WIDGET_DEV0_ID"], env["EXAMPLECOM_WIDGET_DEV1_ID"]) == ("0001", "0002")
    assert env["EXAMPLECOM_WIDGET_IP"] == "192.168.0.200"
    assert len(env) == 1 + 2 * 4 + 4


def test_prepared_claims_survive_restarts_and_unprepare_removes_them(node: Node) -> None:
    node.start_spookd()
    node.start_kubelet()
    claim = node.claim({"widget": ["widget-0001"]})
    pod = node.pod({"w": claim}, {"app": [{"name": "w"}]})
    node.allocate(claim, pod, [("widget", "widget-0001")])
    first = node.prepare(pod)
    assert first.get("error") is None, first
    spec_before = node.specs()

    # Spookd restarts with an edited configuration; the kubelet restarts too, and one
    # with a fresh state directory asks again: the same answer, the spec unchanged.
    assert node.spookd.stop() == 0
    node.spookd.write(CONFIG.replace("192.168.0.200", "10.9.9.9"))
    node.start_spookd()
    node.start_kubelet()
    assert node.prepare(pod) == first
    node.start_kubelet(node.workdir / "fresh-kubelet-state")
    assert node.prepare(pod) == first
    assert node.specs() == spec_before
    checkpoint = json.loads((node.kubelet_dir / "plugins" / DRIVER / "checkpoint.json").read_text())
    assert list(checkpoint["claims"]) == [claim["metadata"]["uid"]]

    assert node.harness is not None
    assert node.harness.request("unprepare", namespace=node.namespace, pod=pod).get("error") is None
    assert node.specs() == {}
    checkpoint = json.loads((node.kubelet_dir / "plugins" / DRIVER / "checkpoint.json").read_text())
    assert checkpoint["claims"] == {}


def test_a_deleted_cdi_spec_is_written_again_on_restart_and_the_kubelet_keeps_going(node: Node) -> None:
    """/var/run is emptied by a reboot; the checkpoint in the kubelet directory is not."""
    node.start_spookd()
    node.start_kubelet()
    claim = node.claim({"widget": ["widget-0001"]})
    pod = node.pod({"w": claim}, {"app": [{"name": "w"}]})
    node.allocate(claim, pod, [("widget", "widget-0001")])
    assert node.prepare(pod).get("error") is None
    before = node.specs()
    assert node.spookd.stop() == 0
    # The kubelet's plugin watcher notices the registration socket is gone and drops the
    # plugin (until then it would use the old process's connection for a prepare).
    assert node.harness is not None
    node.harness.wait_registered(registered=False)
    shutil.rmtree(node.cdi_dir)
    node.start_spookd()
    eventually(lambda: node.cdi_dir.is_dir() and node.specs() == before, what="the spec written again")
    # The same kubelet keeps using the restarted Spookd (its plugin watcher re-registers it).
    claim = node.claim({"widget": ["widget-0002"]})
    pod = node.pod({"w": claim}, {"app": [{"name": "w"}]})
    node.allocate(claim, pod, [("widget", "widget-0002")])
    node.harness.wait_registered()
    answer = node.prepare(pod)
    assert answer.get("error") is None, answer
    assert node.env_of(answer["containers"]["app"])["EXAMPLECOM_WIDGET_ID"] == "0002"


def test_unknown_devices_are_refused_naming_the_device(node: Node) -> None:
    node.start_spookd()
    node.start_kubelet()
    claim = node.claim({"widget": ["widget-4242"]})
    pod = node.pod({"w": claim}, {"app": [{"name": "w"}]})
    node.allocate(claim, pod, [("widget", "widget-4242")])

    answer = node.prepare(pod)

    assert "unknown device minikube/widget-4242 (in no published ResourceSlice)" in answer["error"]
    # In a slice, but not configured for this node (the publisher read another version).
    claim = node.claim({"widget": ["widget-0099"]})
    pod = node.pod({"w": claim}, {"app": [{"name": "w"}]})
    node.allocate(claim, pod, [("widget", "widget-0099")])
    answer = node.prepare(pod)
    assert "example.com/widget 0099 is not configured for node minikube" in answer["error"]
    assert node.specs() == {}


async def _prepare_directly(endpoint: Path, claim: dict[str, Any]) -> dra.NodePrepareResourceResponse:
    channel = Channel(path=str(endpoint))
    try:
        stub = dra.DraPluginStub(channel)
        meta = claim["metadata"]
        request = dra.NodePrepareResourcesRequest(
            claims=[dra.Claim(namespace=meta["namespace"], uid=meta["uid"], name=meta["name"])]
        )
        with anyio.fail_after(10):
            answer = await stub.node_prepare_resources(request)
        return answer.claims[meta["uid"]]
    finally:
        channel.close()


def test_a_claim_of_another_driver_is_refused_naming_the_drivers(node: Node) -> None:
    """The kubelet sends a claim only to its drivers; a client that sends another gets a clear no."""
    node.start_spookd()
    endpoint = node.kubelet_dir / "plugins" / DRIVER / "dra.sock"
    eventually(endpoint.exists, what="the DRA endpoint")
    claim = node.claim({"gpu": ["gpu-0"]})
    pod = node.pod({"g": claim}, {"app": [{"name": "g"}]})
    claim = node.allocate(claim, pod, [("gpu", "gpu-0")], driver="gpu.example.com")

    answer = anyio.run(_prepare_directly, endpoint, claim)

    assert answer.devices == []
    assert answer.error == (
        f"ResourceClaim {node.namespace}/{claim['metadata']['name']}: its allocation names gpu.example.com, "
        f"not {DRIVER}; this node's Spookd prepares only devices of driver {DRIVER}"
    )


def test_spookd_run_dra_checks_its_flags(tmp_path: Path) -> None:
    import subprocess

    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    base = [sys.executable, "-m", "spookd", "run", "--dra", "--config", str(config)]
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "none")}
    bad_driver = subprocess.run(
        [*base, "--dra-driver", "Spookd"], check=False, capture_output=True, text=True, env=env
    )
    assert bad_driver.returncode == 2
    assert "--dra-driver 'Spookd' must be a DNS subdomain" in bad_driver.stderr
    long_dir = subprocess.run(
        [*base, "--kubelet-dir", "/" + "k" * 90], check=False, capture_output=True, text=True, env=env
    )
    assert long_dir.returncode == 2
    assert "is longer than 107 bytes; use a shorter --kubelet-dir" in long_dir.stderr
