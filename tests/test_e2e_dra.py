"""DRA mode on the real node (issue #19 point 3): the walkthrough unchanged, a CEL claim, restarts.

What is real: the e2e cluster of tests/test_e2e.py (kube-apiserver on etcd,
kube-scheduler, kube-controller-manager with the resource-claim controller, the
kubelet ``minikube`` with containerd 2 and CDI), Spookd installed with the Helm chart
and ``dra.enabled: true`` (the publisher Deployment, ``spookd publish``, and the node
DaemonSet, ``spookd run --dra``) from the image built from the Containerfile, with
the walkthrough's mapping (the ConfigMap of deploy/spookd-device-plugin.yaml). The
tests run in order, each on what the one before left:

1. the install: both pods Running, the node plugin registered with the kubelet's
   plugin watcher, the ResourceSlices and DeviceClasses published;
2. ``kubectl apply -f deploy/spookd-test-deployment.yaml`` unchanged: one replica
   Running with exactly the 14 variables of device-plugin mode, one Pending;
3. the walkthrough deleted, a pod with a ResourceClaimTemplate whose CEL selector
   picks the widget by its env attribute gets that widget's environment; a selector
   that matches no device leaves its pod Pending;
4. a kubelet restart, then a node plugin pod restart: the CEL pod keeps running with
   the same container and environment, the slices are the same objects; deleting the
   pod afterwards unprepares its claim (the CDI spec goes) through the new plugin.

Runs with the e2e (``SPOOKD_E2E=1``, as root, under ``flock /work/e2e.lock``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

if os.environ.get("SPOOKD_E2E") != "1":
    pytest.skip("the end-to-end tests run with SPOOKD_E2E=1 (nox -s e2e)", allow_module_level=True)

from e2e.cluster import LOGS, NODE_NAME, PLUGIN_MANIFEST, Cluster
from e2e.fixture import reported_cluster
from e2e.host import E2EError, wait_for
from test_e2e import WIDGET, exec_env, expected_env, pods, ready, unschedulable_message, wait_split

pytestmark = pytest.mark.timeout(3000)

DRIVER = "spookd.skao.int"
NAMESPACE = "kube-system"
CLASSES = {"widget.example.com": "example.com/widget", "thingamajig.example.com": "example.com/thingamajig"}
REGISTRATION_SOCKET = f"/var/lib/kubelet/plugins_registry/{DRIVER}-reg.sock"
CDI_DIR = "/run/cdi"
CEL_POD = "widget-by-port"
NO_MATCH_POD = "widget-by-missing-ip"


def walkthrough_mapping() -> list[dict[str, Any]]:
    """The deviceMapping of deploy/spookd-device-plugin.yaml's ConfigMap."""
    for obj in yaml.safe_load_all(PLUGIN_MANIFEST.read_text()):
        if obj and obj["kind"] == "ConfigMap":
            mapping: list[dict[str, Any]] = yaml.safe_load(obj["data"]["config.yaml"])["deviceMapping"]
            return mapping
    raise AssertionError(f"no ConfigMap in {PLUGIN_MANIFEST}")


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The e2e cluster with its scheduler and controllers (no Spookd yet)."""
    with reported_cluster(request, "e2e DRA timings", "dra.txt") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def installed(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``helm install`` with ``dra.enabled`` and the walkthrough's mapping; what it printed."""
    from support.helm import helm_binary

    helm = str(helm_binary())
    values = tmp_path_factory.mktemp("helm") / "values.yaml"
    values.write_text(
        yaml.safe_dump({"dra": {"enabled": True}, "deviceMapping": walkthrough_mapping()}, sort_keys=False)
    )
    began = time.monotonic()
    done = cluster.shell(
        [helm, "install", "spookd", "helm/spookd", "-n", NAMESPACE, "-f", str(values), "--wait", "--timeout=180s"],
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(f"helm install failed:\n{done.stdout}{done.stderr}\n{cluster.logs()}")
    cluster.timings["helm install --wait (DRA)"] = time.monotonic() - began
    try:
        yield done.stdout
    finally:
        (LOGS / "spookd-dra-node.log").write_text(
            cluster.kubectl("-n", NAMESPACE, "logs", "daemonset/spookd", check=False).stdout
        )
        (LOGS / "spookd-dra-publisher.log").write_text(
            cluster.kubectl("-n", NAMESPACE, "logs", "deployment/spookd-publisher", check=False).stdout
        )
        cluster.shell([helm, "uninstall", "spookd", "-n", NAMESPACE, "--wait"], check=False)


def listing(cluster: Cluster, path: str, **query: str) -> list[dict[str, Any]]:
    answer = cluster.client().request("GET", path, query=query or None)
    assert answer.status == 200, answer.text
    items: list[dict[str, Any]] = answer.json["items"]
    return items


def slices(cluster: Cluster) -> list[dict[str, Any]]:
    return listing(cluster, "/apis/resource.k8s.io/v1/resourceslices", fieldSelector=f"spec.driver={DRIVER}")


def published(cluster: Cluster) -> dict[str, str]:
    """Each published device's ``resource/instanceID`` → its slice's UID."""
    found = {}
    for item in slices(cluster):
        for device in item["spec"].get("devices", []):
            attributes = device.get("attributes", {})
            key = (
                f"{attributes[f'{DRIVER}/resource']['string']}/{attributes[f'{DRIVER}/instanceID']['string']}"
            )
            found[key] = item["metadata"]["uid"]
    return found


def publisher_pod(cluster: Cluster) -> dict[str, Any]:
    [pod] = listing(
        cluster,
        f"/api/v1/namespaces/{NAMESPACE}/pods",
        labelSelector="app.kubernetes.io/name=spookd-publisher",
    )
    return pod


def node_file(cluster: Cluster, path: str) -> str | None:
    """A file's text as the node (containerd, the kubelet) sees it; None if it does not exist."""
    done = cluster.node_command(["cat", path], check=False)
    return done.stdout if done.returncode == 0 else None


def registrations(cluster: Cluster) -> int:
    """How often the kubelet's plugin watcher has seen the registration socket appear."""
    lines = (LOGS / "kubelet.log").read_text(errors="replace").splitlines()
    return sum(1 for line in lines if "Adding socket path" in line and REGISTRATION_SOCKET in line)


def wait_node_plugin(cluster: Cluster, not_named: str = "") -> dict[str, Any]:
    """The node DaemonSet's pod Running and Ready (its /readyz: the kubelet said "registered")."""

    def up() -> dict[str, Any] | None:
        try:
            pod = cluster.spookd_pod()
        except E2EError:
            return None
        fresh = pod["metadata"]["name"] != not_named and "deletionTimestamp" not in pod["metadata"]
        return pod if fresh and pod["status"].get("phase") == "Running" and ready(pod) else None

    try:
        return wait_for("the node plugin's pod Ready", up, 120)
    except E2EError as error:
        raise AssertionError(f"{error}\n{cluster.logs()}") from None


def test_helm_install_runs_the_publisher_and_the_registered_node_plugin(
    cluster: Cluster, installed: str
) -> None:
    assert "STATUS: deployed" in installed, installed
    publisher = publisher_pod(cluster)
    assert publisher["status"]["phase"] == "Running", publisher["status"]
    assert ready(publisher), publisher["status"]
    node_plugin = wait_node_plugin(cluster)
    [container] = node_plugin["spec"]["containers"]
    assert container["args"][:2] == ["run", "--dra"], container["args"]
    assert node_plugin["spec"]["nodeName"] == NODE_NAME
    # The plugin watcher found the registration socket; the pod is Ready only after
    # the kubelet's NotifyRegistrationStatus said "registered" (/readyz).
    ls = cluster.node_command(["ls", "/var/lib/kubelet/plugins_registry"]).stdout.split()
    assert f"{DRIVER}-reg.sock" in ls, ls
    assert registrations(cluster) >= 1, "the kubelet's plugin watcher never saw " + REGISTRATION_SOCKET
    devices = wait_for(
        "the walkthrough's devices in ResourceSlices",
        lambda: published(cluster) if len(published(cluster)) == 2 else None,
        60,
    )
    assert sorted(devices) == ["example.com/thingamajig/A1234", "example.com/widget/0001"], devices
    classes = {
        c["metadata"]["name"]: c["spec"].get("extendedResourceName")
        for c in listing(cluster, "/apis/resource.k8s.io/v1/deviceclasses")
    }
    assert classes == CLASSES, classes


def test_the_walkthrough_runs_one_replica_with_exactly_the_14_variables_and_one_pending(
    cluster: Cluster, installed: str
) -> None:
    applied = cluster.kubectl("apply", "-f", "deploy/spookd-test-deployment.yaml").stdout
    assert applied == "deployment.apps/spookd-test created\n"
    began = time.monotonic()
    running, pending = wait_split(cluster, timeout=180)
    cluster.timings["walkthrough apply to one Running, one Pending"] = time.monotonic() - began
    assert running["spec"]["nodeName"] == NODE_NAME
    message = unschedulable_message(pending)
    assert "cannot allocate all claims" in message, message
    env = exec_env(cluster, running)
    assert env == expected_env("0001", "A1234", WIDGET), env
    assert len(env) == 14, env
    claim = running["status"].get("extendedResourceClaimStatus", {}).get("resourceClaimName", "")
    assert claim, running["status"]
    spec = node_file(cluster, f"{CDI_DIR}/{DRIVER}-claim_{claim_uid(cluster, claim)}.json")
    assert spec is not None
    assert "EXAMPLECOM_WIDGET_IP=192.168.0.200" in spec, spec


def claim_uid(cluster: Cluster, name: str) -> str:
    claim = cluster.client().get("resource.k8s.io/v1", "ResourceClaim", name, "default")
    uid: str = claim["metadata"]["uid"]
    return uid


def claim_template(name: str, expression: str) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "spec": {
                "devices": {
                    "requests": [
                        {
                            "name": "widget",
                            "exactly": {
                                "deviceClassName": "widget.example.com",
                                "selectors": [{"cel": {"expression": expression}}],
                            },
                        }
                    ]
                }
            }
        },
    }


def claim_pod(name: str, template: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"spookd-e2e": "dra"}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "resourceClaims": [{"name": "widget", "resourceClaimTemplateName": template}],
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534},
            "containers": [
                {
                    "name": "app",
                    "image": "busybox:1.37",
                    "command": ["sh", "-c", "while true; do sleep 3600; done"],
                    "resources": {"claims": [{"name": "widget"}]},
                }
            ],
        },
    }


def widget_env() -> list[str]:
    """SPEC §5 for the one widget alone (no thingamajig)."""
    return [line for line in expected_env("0001", "A1234", WIDGET) if line.startswith("EXAMPLECOM_WIDGET_")]


def pod_claim(pod: dict[str, Any]) -> str:
    [status] = pod["status"]["resourceClaimStatuses"]
    name: str = status["resourceClaimName"]
    return name


def test_a_resource_claim_template_with_a_cel_selector_gets_the_matching_widget(
    cluster: Cluster, installed: str
) -> None:
    cluster.kubectl("delete", "-f", "deploy/spookd-test-deployment.yaml", "--wait=true")
    wait_for("the walkthrough's pods gone", lambda: True if not pods(cluster) else None, 60)
    manifests = [
        claim_template("by-port", 'device.attributes["env.spookd.skao.int"].PORT == "12345"'),
        claim_template("by-missing-ip", 'device.attributes["env.spookd.skao.int"].IP == "10.9.9.9"'),
        claim_pod(CEL_POD, "by-port"),
        claim_pod(NO_MATCH_POD, "by-missing-ip"),
    ]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests))

    def running() -> dict[str, Any] | None:
        pod = cluster.client().get("v1", "Pod", CEL_POD, "default")
        return pod if pod["status"].get("phase") == "Running" and ready(pod) else None

    try:
        pod = wait_for(f"{CEL_POD} Running", running, 180)
    except E2EError as error:
        raise AssertionError(f"{error}\n{cluster.logs()}") from None
    assert exec_env(cluster, pod) == widget_env()
    claim = cluster.client().get("resource.k8s.io/v1", "ResourceClaim", pod_claim(pod), "default")
    [result] = claim["status"]["allocation"]["devices"]["results"]
    assert (result["driver"], result["pool"], result["request"]) == (DRIVER, NODE_NAME, "widget"), result

    def refused() -> str | None:
        other = cluster.client().get("v1", "Pod", NO_MATCH_POD, "default")
        return unschedulable_message(other) or None

    message = wait_for(f"{NO_MATCH_POD} unschedulable", refused, 60)
    assert "cannot allocate all claims" in message, message
    cluster.kubectl("delete", "pod", NO_MATCH_POD, "--wait=true")


def cel_pod_state(cluster: Cluster) -> tuple[str, int, list[str]]:
    pod = cluster.client().get("v1", "Pod", CEL_POD, "default")
    [status] = pod["status"]["containerStatuses"]
    assert pod["status"]["phase"] == "Running", pod["status"]
    assert ready(pod), pod["status"]
    return status["containerID"], status["restartCount"], exec_env(cluster, pod)


def test_kubelet_and_node_plugin_restarts_keep_the_running_pod_and_its_device(
    cluster: Cluster, installed: str
) -> None:
    before = cel_pod_state(cluster)
    pod = cluster.client().get("v1", "Pod", CEL_POD, "default")
    spec_path = f"{CDI_DIR}/{DRIVER}-claim_{claim_uid(cluster, pod_claim(pod))}.json"
    spec = node_file(cluster, spec_path)
    assert spec is not None
    slices_before = published(cluster)

    cluster.timings["kubelet restart to Node Ready (DRA)"] = cluster.restart_kubelet()
    # The kubelet wipes its node's slices (spec.nodeName) as it starts; watch for it a while.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert published(cluster) == slices_before, "the slices changed after the kubelet restart"
        time.sleep(0.5)
    wait_node_plugin(cluster)
    assert cel_pod_state(cluster) == before
    assert node_file(cluster, spec_path) == spec

    old = cluster.spookd_pod()["metadata"]["name"]
    seen = registrations(cluster)
    cluster.kubectl("-n", NAMESPACE, "delete", "pod", old, "--wait=true")
    wait_node_plugin(cluster, not_named=old)
    wait_for(
        "the kubelet seeing the new registration socket", lambda: registrations(cluster) > seen or None, 60
    )
    assert cel_pod_state(cluster) == before
    assert node_file(cluster, spec_path) == spec
    assert published(cluster) == slices_before

    # The new plugin unprepares the claim its predecessor prepared (from its checkpoint).
    cluster.kubectl("delete", "pod", CEL_POD, "--wait=true")
    wait_for("the claim's CDI spec removed", lambda: node_file(cluster, spec_path) is None or None, 60)
