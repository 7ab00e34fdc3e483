"""DRA mode's deployment (issue #19 point 2): the chart's ``dra.enabled`` and deploy/spookd-dra.yaml.

With a real Helm: the chart lints strictly and renders the publisher Deployment, the
node DaemonSet in ``spookd run --dra`` and no device-plugin DaemonSet; the RBAC rules
are exact, and no rule writes cluster-wide but the publisher's on resourceslices and
deviceclasses; the hostPaths, probes and securityContext are checked; the plain
manifest equals the chart's rendering. With a real kube-apiserver: every object is
accepted under strict field validation, and ``spookd publish`` run with the
Deployment's arguments and environment and its ServiceAccount's token (nothing else)
leads and publishes, while the node's account may read claims and slices and write
neither.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from support.apiserver import ApiClient, ApiServer
from support.drapublisher import CLASSES, SLICES, wait_until
from support.helm import Helm, load_documents

pytestmark = [pytest.mark.apiserver, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "spookd"
PLAIN_DRA = REPO / "deploy" / "spookd-dra.yaml"
DRA_OPTIONS = REPO / "tests" / "data" / "helm" / "dra-options.yaml"
DRA = {"dra.enabled": "true"}
#: Labels Helm adds that a plain manifest leaves out.
HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/version", "app.kubernetes.io/managed-by")
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection", "*"}


@pytest.fixture(scope="module")
def helm() -> Helm:
    return Helm.build(CHART)


def _one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _container(workload: Mapping[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _env(workload: Mapping[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in _container(workload)["env"]}


def _rules_of(objects: list[dict[str, Any]], account: str, namespace: str) -> dict[str, list[Any]]:
    """Role kind and name -> rules, for every role bound to ServiceAccount ``account``."""
    out: dict[str, list[Any]] = {}
    for binding in (o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        subject = {"kind": "ServiceAccount", "name": account, "namespace": namespace}
        if subject in binding["subjects"]:
            ref = binding["roleRef"]
            role = _one(objects, ref["kind"], ref["name"])
            out[f"{ref['kind']}/{ref['name']}"] = role["rules"]
    return out


# ------------------------------------------------------------------------ Helm alone


@pytest.mark.parametrize("values", [None, DRA_OPTIONS], ids=["dra-defaults", "dra-options"])
def test_dra_chart_lints_strictly(helm: Helm, values: Path | None) -> None:
    if values is None:
        helm.run("lint", str(CHART), "--strict", "--set", "dra.enabled=true")
    else:
        helm.lint([values])


def test_dra_renders_the_publisher_and_the_node_plugin_not_the_device_plugin(helm: Helm) -> None:
    objects = helm.template("spookd", "kube-system", set_json=DRA)
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == [
        ("ClusterRole", "spookd-kube-system-dra-node"),
        ("ClusterRole", "spookd-kube-system-dra-publisher"),
        ("ClusterRoleBinding", "spookd-kube-system-dra-node"),
        ("ClusterRoleBinding", "spookd-kube-system-dra-publisher"),
        ("ConfigMap", "spookd-config"),
        ("DaemonSet", "spookd"),
        ("Deployment", "spookd-publisher"),
        ("Role", "spookd-publisher"),
        ("Role", "spookd-watch-configmaps"),
        ("RoleBinding", "spookd-publisher"),
        ("RoleBinding", "spookd-watch-configmaps"),
        ("ServiceAccount", "spookd"),
        ("ServiceAccount", "spookd-publisher"),
    ]
    node = _one(objects, "DaemonSet")
    assert _container(node)["args"] == ["run", "--dra"]
    env = _env(node)
    assert "SPOOKD_PLUGIN_DIR" not in env
    assert env["SPOOKD_KUBELET_DIR"] == "/var/lib/kubelet"
    assert env["SPOOKD_CDI_DIR"] == "/var/run/cdi"
    assert env["SPOOKD_CONFIGMAP"] == "$(POD_NAMESPACE)/spookd-config"
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}

    publisher = _one(objects, "Deployment")
    assert publisher["spec"]["replicas"] == 1
    assert _container(publisher)["args"] == ["publish"]
    env = _env(publisher)
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["SPOOKD_LEASE_NAMESPACE"] == "$(POD_NAMESPACE)"
    assert env["SPOOKD_IDENTITY"] == "$(POD_NAME)"
    assert env["SPOOKD_CONFIGMAP"] == "$(POD_NAMESPACE)/spookd-config"
    pod = publisher["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "spookd-publisher"
    assert "hostPath" not in json.dumps(pod)
    # The DaemonSet's selector is immutable and must not take in the publisher's pods.
    node_selector = node["spec"]["selector"]["matchLabels"].items()
    assert not node_selector <= publisher["spec"]["template"]["metadata"]["labels"].items()
    assert publisher["spec"]["selector"]["matchLabels"].items() <= (
        publisher["spec"]["template"]["metadata"]["labels"].items()
    )


def test_every_spookd_variable_is_a_flag_of_its_command(helm: Helm) -> None:
    objects = helm.template("spookd", "kube-system", values=[DRA_OPTIONS])
    for kind, command in (("DaemonSet", "run"), ("Deployment", "publish")):
        usage = subprocess.run(
            [sys.executable, "-m", "spookd", command, "--help"],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        ).stdout
        names = [n for n in _env(_one(objects, kind)) if n.startswith("SPOOKD_")]
        assert len(names) >= 5
        for name in names:
            flag = "--" + name.removeprefix("SPOOKD_").lower().replace("_", "-")
            assert flag in usage, f"{kind}: {name} matches no flag of `spookd {command}`"


def test_dra_rbac_rules_are_exact(helm: Helm) -> None:
    objects = helm.template("spookd", "lab", set_json=DRA)
    assert _rules_of(objects, "spookd-publisher", "lab") == {
        "ClusterRole/spookd-lab-dra-publisher": [
            {
                "apiGroups": ["resource.k8s.io"],
                "resources": ["resourceslices", "deviceclasses"],
                "verbs": ["get", "list", "create", "update", "delete"],
            }
        ],
        "Role/spookd-publisher": [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": ["spookd-config"],
                "verbs": ["get", "list", "watch"],
            },
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": ["spookd-publisher"],
                "verbs": ["get", "update"],
            },
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        ],
    }
    assert _rules_of(objects, "spookd", "lab") == {
        "ClusterRole/spookd-lab-dra-node": [
            {"apiGroups": ["resource.k8s.io"], "resources": ["resourceclaims"], "verbs": ["get"]},
            {"apiGroups": ["resource.k8s.io"], "resources": ["resourceslices"], "verbs": ["get", "list"]},
        ],
        "Role/spookd-watch-configmaps": [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": ["spookd-config"],
                "verbs": ["get", "list", "watch"],
            },
            {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        ],
    }
    # Whatever the options: no cluster-wide write but the publisher's on slices and classes.
    for rendered in (objects, helm.template("spookd", "lab", values=[DRA_OPTIONS])):
        for role in (o for o in rendered if o["kind"] == "ClusterRole"):
            for rule in role["rules"]:
                if WRITE_VERBS & set(rule["verbs"]):
                    assert role["metadata"]["name"].endswith("-dra-publisher"), role
                    assert rule["apiGroups"] == ["resource.k8s.io"]
                    assert set(rule["resources"]) <= {"resourceslices", "deviceclasses"}
                assert "*" not in rule["resources"] + rule["apiGroups"]


def test_dra_host_paths_are_the_kubelets_plugin_directories_and_cdi(helm: Helm) -> None:
    def mounts(objects: list[dict[str, Any]]) -> dict[str, tuple[str, str, str]]:
        pod = _one(objects, "DaemonSet")["spec"]["template"]["spec"]
        mounted = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        return {
            v["name"]: (v["hostPath"]["path"], v["hostPath"]["type"], mounted[v["name"]])
            for v in pod["volumes"]
            if "hostPath" in v
        }

    # Sockets are handed to the kubelet by path: inside the container they are where they are on the host.
    assert mounts(helm.template("spookd", "kube-system", set_json=DRA)) == {
        "plugins": ("/var/lib/kubelet/plugins", "Directory", "/var/lib/kubelet/plugins"),
        "plugins-registry": (
            "/var/lib/kubelet/plugins_registry",
            "Directory",
            "/var/lib/kubelet/plugins_registry",
        ),
        "cdi": ("/var/run/cdi", "DirectoryOrCreate", "/var/run/cdi"),
    }
    microk8s = "/var/snap/microk8s/common/var/lib/kubelet"
    objects = helm.template(
        "spookd", "kube-system", set_json={**DRA, "pluginDir": json.dumps(f"{microk8s}/device-plugins")}
    )
    assert mounts(objects)["plugins"] == (f"{microk8s}/plugins", "Directory", f"{microk8s}/plugins")
    assert _env(_one(objects, "DaemonSet"))["SPOOKD_KUBELET_DIR"] == microk8s
    options = helm.template("spookd", "kube-system", values=[DRA_OPTIONS])
    assert mounts(options) == {
        "plugins": ("/data/kubelet/plugins", "Directory", "/data/kubelet/plugins"),
        "plugins-registry": (
            "/data/kubelet/plugins_registry",
            "Directory",
            "/data/kubelet/plugins_registry",
        ),
        "cdi": ("/etc/cdi", "DirectoryOrCreate", "/etc/cdi"),
    }
    env = _env(_one(options, "DaemonSet"))
    assert (env["SPOOKD_KUBELET_DIR"], env["SPOOKD_CDI_DIR"]) == ("/data/kubelet", "/etc/cdi")


def test_dra_node_daemonset_has_the_device_plugins_probes_and_security(helm: Helm) -> None:
    plugin = _one(helm.template("spookd", "kube-system"), "DaemonSet")
    node = _one(helm.template("spookd", "kube-system", set_json=DRA), "DaemonSet")
    for key in ("livenessProbe", "readinessProbe", "securityContext", "ports", "resources"):
        assert _container(node)[key] == _container(plugin)[key], key
    assert node["spec"]["updateStrategy"] == plugin["spec"]["updateStrategy"]
    for key in ("securityContext", "priorityClassName", "tolerations", "terminationGracePeriodSeconds"):
        assert node["spec"]["template"]["spec"][key] == plugin["spec"]["template"]["spec"][key], key
    assert _container(node)["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert _container(node)["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert _container(node)["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert _container(node)["securityContext"]["readOnlyRootFilesystem"] is True
    # The publisher touches nothing on the host: non-root, Pod Security "restricted".
    publisher = _one(helm.template("spookd", "kube-system", set_json=DRA), "Deployment")
    pod = publisher["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert _container(publisher)["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


@pytest.mark.parametrize("values", [None, DRA_OPTIONS], ids=["dra-defaults", "dra-options"])
def test_rendered_configuration_is_what_the_publisher_accepts(
    helm: Helm, values: Path | None, tmp_path: Path
) -> None:
    objects = helm.template("spookd", "kube-system", [values] if values else [], set_json=DRA)
    key = _env(_one(objects, "Deployment"))["SPOOKD_CONFIGMAP_KEY"]
    config = tmp_path / "config.yaml"
    config.write_text(_one(objects, "ConfigMap")["data"][key])
    proc = subprocess.run(
        [sys.executable, "-m", "spookd", "validate", "--dra", str(config)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("option", ["exclusive", "cleanupStaleResources", "nodeLabels"])
def test_dra_refuses_device_plugin_options(helm: Helm, option: str) -> None:
    proc = helm.run(
        *helm.template_args("spookd", "kube-system", set_json={**DRA, f"rbac.{option}": "true"}),
        check=False,
    )
    assert proc.returncode != 0, f"helm accepted rbac.{option} in DRA mode"
    assert f"rbac.{option} is a device-plugin option with no effect in DRA mode" in proc.stderr
    assert f"unset rbac.{option}" in proc.stderr


def test_dra_node_selector_mapping_needs_no_node_read_access(helm: Helm) -> None:
    mapping = '[{"nodeSelector": {"matchLabels": {"gpu": "true"}}, "devices": []}]'
    objects = helm.template("spookd", "kube-system", set_json={**DRA, "deviceMapping": mapping})
    assert "nodes" not in json.dumps([o["rules"] for o in objects if o["kind"] == "ClusterRole"])


@pytest.mark.parametrize(
    ("set_json", "complaint"),
    [
        ({"dra.enabled": '"yes"'}, "/dra/enabled"),
        ({"dra.cdiDir": '"var/run/cdi"'}, "/dra/cdiDir"),
        ({"dra.kubeletDir": '"kubelet"'}, "/dra/kubeletDir"),
        ({"dra.publisher.replicas": "0"}, "/dra/publisher/replicas"),
        ({"dra.driver": '"x.io"'}, "additional properties 'driver' not allowed"),
    ],
    ids=["enabled-string", "cdi-relative", "kubelet-relative", "no-replicas", "unknown-key"],
)
def test_dra_schema_rejects_wrong_values(helm: Helm, set_json: dict[str, str], complaint: str) -> None:
    proc = helm.run(*helm.template_args("spookd", "kube-system", set_json=set_json), check=False)
    assert proc.returncode != 0, f"helm accepted {set_json}"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert complaint in proc.stderr


def _without_helm_labels(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = json.loads(json.dumps(objects))
    for obj in out:
        for label in HELM_LABELS:
            obj["metadata"].get("labels", {}).pop(label, None)
    return sorted(out, key=lambda o: (o["kind"], o["metadata"]["name"]))


def test_plain_dra_manifest_is_the_charts_rendering(helm: Helm) -> None:
    plain = _without_helm_labels(load_documents(PLAIN_DRA.read_text()))
    assert plain == _without_helm_labels(helm.template("spookd", "kube-system", set_json=DRA))
    drifted = helm.template("spookd", "kube-system", set_json={**DRA, "dra.cdiDir": '"/etc/cdi"'})
    assert _without_helm_labels(drifted) != plain


# ------------------------------------------------------------ against the API server


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with ApiServer.start(tmp_path_factory.mktemp("apiserver")) as server:
        yield server


def _namespace(name: str) -> dict[str, Any]:
    labels = {"pod-security.kubernetes.io/enforce": "privileged"}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


@pytest.mark.parametrize("values", [None, DRA_OPTIONS], ids=["dra-defaults", "dra-options"])
def test_dra_objects_are_accepted_by_the_api_server(helm: Helm, api: ApiServer, values: Path | None) -> None:
    admin = api.client()
    admin.ensure(_namespace("spookd-dra"))
    objects = helm.template("spookd", "spookd-dra", [values] if values else [], set_json=DRA)
    for obj in objects:
        answer = admin.create(obj, dry_run=True)
        assert answer.status == 201, f"{obj['kind']} {obj['metadata']['name']}: {answer.text}"
        assert answer.warnings == [], f"{obj['kind']}: {answer.warnings}"


@pytest.fixture(scope="module")
def installed(api: ApiServer) -> list[dict[str, Any]]:
    """deploy/spookd-dra.yaml, created for real in kube-system."""
    admin = api.client()
    objects = load_documents(PLAIN_DRA.read_text())
    for obj in objects:
        admin.ensure(obj)
    return objects


def _resolve(env: list[dict[str, Any]], fields: Mapping[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet gives it: fieldRefs filled, $(VAR) expanded."""
    out: dict[str, str] = {}
    for item in env:
        if "valueFrom" in item:
            out[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            out[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: out[m.group(1)], item["value"])
    return out


def test_publisher_runs_on_its_service_accounts_permissions_alone(
    api: ApiServer, installed: list[dict[str, Any]], tmp_path: Path
) -> None:
    admin = api.client()
    deployment = _one(installed, "Deployment")
    container = _container(deployment)
    fields = {"metadata.name": "spookd-publisher-7d9f-x2k4q", "metadata.namespace": "kube-system"}
    env = _resolve(container["env"], fields)
    token = api.service_account_token(
        "kube-system", deployment["spec"]["template"]["spec"]["serviceAccountName"]
    )
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", token, namespace="kube-system")
    process_env = {k: v for k, v in os.environ.items() if not k.startswith(("SPOOKD_", "KUBERNETES_"))}
    process_env.update(env, KUBECONFIG=str(kubeconfig), SPOOKD_LEASE_DURATION="3", SPOOKD_LOG_FORMAT="json")
    log = tmp_path / "publisher.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "spookd", *container["args"]], env=process_env, stdout=out, stderr=out
        )
    try:
        lease = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/spookd-publisher"

        def holder() -> str | None:
            answer = admin.request("GET", lease)
            return answer.json["spec"].get("holderIdentity") if answer.status == 200 else None

        wait_until(lambda: holder() == fields["metadata.name"], what="the publisher holding its Lease")
        by_driver = {"fieldSelector": "spec.driver=spookd.skao.int"}
        wait_until(
            lambda: len(admin.request("GET", SLICES, query=by_driver).json["items"]) == 1,
            what="the minikube pool's slice",
        )
        classes = admin.request("GET", CLASSES).json["items"]
        assert len(classes) == 2, [c["metadata"]["name"] for c in classes]
        assert process.poll() is None, log.read_text()
        assert "forbidden" not in log.read_text().lower(), log.read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)
        admin.request("DELETE", SLICES, query={"fieldSelector": "spec.driver=spookd.skao.int"})
        admin.request("DELETE", CLASSES, query={"labelSelector": "app.kubernetes.io/managed-by=spookd"})


def test_node_account_reads_claims_and_slices_and_writes_neither(
    api: ApiServer, installed: list[dict[str, Any]]
) -> None:
    node = api.client(token=api.service_account_token("kube-system", "spookd"))
    publisher = api.client(token=api.service_account_token("kube-system", "spookd-publisher"))

    def status(client: ApiClient, method: str, path: str, **kwargs: Any) -> int:
        return client.request(method, path, **kwargs).status

    claim = "/apis/resource.k8s.io/v1/namespaces/default/resourceclaims/some-claim"
    pool = {"fieldSelector": "spec.driver=spookd.skao.int,spec.pool.name=minikube"}
    # What spookd/kube/draclaims.py does: GET a claim by name (missing: 404, not 403), LIST slices.
    assert status(node, "GET", claim) == 404
    assert status(node, "GET", SLICES, query=pool) == 200
    slice_body = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": "spookd-node-test"},
        "spec": {
            "driver": "spookd.skao.int",
            "pool": {"name": "p", "generation": 1, "resourceSliceCount": 1},
            "nodeName": "minikube",
            "devices": [],
        },
    }
    dry = {"dryRun": "All"}
    assert status(node, "POST", SLICES, body=slice_body, query=dry) == 403
    assert status(publisher, "POST", SLICES, body=slice_body, query=dry) == 201
    assert status(node, "DELETE", f"{SLICES}/anything") == 403
    assert status(node, "GET", CLASSES) == 403
    assert status(node, "PUT", claim, body={}) == 403
    assert status(node, "GET", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases") == 403
    # The publisher reads no claims, nodes or pods, and holds no other Lease.
    assert status(publisher, "GET", claim) == 403
    assert status(publisher, "GET", "/api/v1/nodes") == 403
    assert status(publisher, "GET", "/api/v1/pods") == 403
    other = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/someone-else"
    assert status(publisher, "GET", other) == 403
    assert status(publisher, "GET", "/apis/coordination.k8s.io/v1/namespaces/default/leases") == 403
