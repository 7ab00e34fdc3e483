"""The deployment artefacts against a real kube-apiserver and a real Helm (SPEC §8).

The chart is linted and rendered with four values files; every rendered object and
both plain manifests must be accepted by a server-side dry-run with strict field
validation and no warnings; the values schema must reject wrong values; the plain
manifest and the chart's default rendering must describe the same DaemonSet, RBAC and
configuration; the RBAC must let Spookd's service account read its one ConfigMap and
record Events, and nothing else.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from support.apiserver import ApiClient, ApiServer
from support.helm import KUBE_VERSION, Helm, load_documents

# The first test to need Helm or the API server builds it (minutes on a cold Go
# cache); nothing here is timed.
pytestmark = [pytest.mark.apiserver, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "spookd"
PLAIN = REPO / "deploy" / "spookd-device-plugin.yaml"
TEST_DEPLOYMENT = REPO / "deploy" / "spookd-test-deployment.yaml"
NODE_LABELS = REPO / "deploy" / "spookd-node-labels.yaml"
VALUES_DIR = REPO / "tests" / "data" / "helm"

#: Values file per case (None: the chart's defaults) and the namespace it renders into.
CASES: dict[str, tuple[Path | None, str]] = {
    "default": (None, "kube-system"),
    "empty-mapping": (VALUES_DIR / "empty-mapping.yaml", "spookd-empty"),
    "large-mapping": (VALUES_DIR / "large-mapping.yaml", "spookd-large"),
    "all-options": (VALUES_DIR / "all-options.yaml", "spookd-all"),
}
SA_USER = "system:serviceaccount:kube-system:spookd"


def _values(case: str) -> list[Path]:
    path = CASES[case][0]
    return [] if path is None else [path]


def _load(path: Path) -> list[dict[str, Any]]:
    return load_documents(path.read_text())


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _env(daemonset: Mapping[str, Any]) -> dict[str, Any]:
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _watched_configmap(daemonset: Mapping[str, Any]) -> tuple[str, str]:
    """(name, key) of the ConfigMap the DaemonSet tells Spookd to watch."""
    env = _env(daemonset)
    namespace_ref, _, name = env["SPOOKD_CONFIGMAP"].partition("/")
    assert namespace_ref == "$(POD_NAMESPACE)", "Spookd must watch a ConfigMap in its own namespace"
    return name, env["SPOOKD_CONFIGMAP_KEY"]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def helm() -> Helm:
    return Helm.build(CHART)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with ApiServer.start(tmp_path_factory.mktemp("apiserver")) as server:
        yield server


@pytest.fixture(scope="module")
def admin(api: ApiServer) -> ApiClient:
    client = api.client()
    for _, namespace in CASES.values():
        client.ensure(_namespace(namespace, enforce="privileged"))
    client.ensure(SERVICE_MONITOR_CRD)
    _wait_for_kind(client, "monitoring.coreos.com/v1", "ServiceMonitor")
    return client


def _namespace(name: str, *, enforce: str | None = None) -> dict[str, Any]:
    labels = {} if enforce is None else {"pod-security.kubernetes.io/enforce": enforce}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def _wait_for_kind(client: ApiClient, api_version: str, kind: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.resource(api_version, kind)
            return
        except KeyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _duration(description: str) -> dict[str, Any]:
    return {"type": "string", "pattern": "^(0|([0-9]+(ms|s|m|h))+)$", "description": description}


#: A stand-in for the Prometheus operator's ServiceMonitor CRD: the fields the chart
#: uses, typed as upstream types them, so strict field validation catches a typo.
SERVICE_MONITOR_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {
            "kind": "ServiceMonitor",
            "listKind": "ServiceMonitorList",
            "plural": "servicemonitors",
            "singular": "servicemonitor",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "required": ["spec"],
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["selector"],
                                "properties": {
                                    "jobLabel": {"type": "string"},
                                    "selector": {
                                        "type": "object",
                                        "properties": {
                                            "matchLabels": {
                                                "type": "object",
                                                "additionalProperties": {"type": "string"},
                                            }
                                        },
                                    },
                                    "namespaceSelector": {
                                        "type": "object",
                                        "properties": {
                                            "any": {"type": "boolean"},
                                            "matchNames": {
                                                "type": "array",
                                                "items": {"type": "string"},
                                            },
                                        },
                                    },
                                    "endpoints": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "port": {"type": "string"},
                                                "path": {"type": "string"},
                                                "scheme": {"type": "string"},
                                                "interval": _duration("scrape interval"),
                                                "scrapeTimeout": _duration("scrape timeout"),
                                            },
                                        },
                                    },
                                },
                            }
                        },
                    }
                },
            }
        ],
    },
}


# ------------------------------------------------------------------------ Helm alone


@pytest.mark.parametrize("case", CASES)
def test_chart_lints_strictly(helm: Helm, case: str) -> None:
    helm.lint(_values(case))


@pytest.mark.parametrize(
    ("set_json", "complaint"),
    [
        ({"logLevel": "5"}, "/logLevel"),
        ({"logFormat": '"yaml"'}, "/logFormat"),
        ({"loglevel": '"debug"'}, "additional properties 'loglevel' not allowed"),
        ({"metrics": '{"port": "8080"}'}, "/metrics/port"),
        ({"updateStrategy.rollingUpdate.maxSurge": "1"}, "/updateStrategy/rollingUpdate/maxSurge"),
        (
            {
                "deviceMapping": '[{"hosts": ["n1"], "devices": [{"resourceName": "a.io/x", "instanceID": 1}]}]'
            },
            "/deviceMapping/0/devices/0/instanceID",
        ),
        (
            {
                "deviceMapping": '[{"hosts": ["n1"], "devices": '
                '[{"resourceName": "a.io/x", "instanceID": "1", "env": {"ON": true}}]}]'
            },
            "/deviceMapping/0/devices/0/env/ON",
        ),
        (
            {"deviceMapping": '[{"hosts": [], "devices": []}]'},
            "/deviceMapping/0/hosts",
        ),
        (
            {
                "deviceMapping": '[{"hosts": ["n1"], "devices": [{"resourcename": "a.io/x", "instanceID": "1"}]}]'
            },
            "additional properties 'resourcename' not allowed",
        ),
    ],
    ids=[
        "logLevel-number",
        "logFormat-unknown",
        "unknown-top-level-key",
        "port-string",
        "maxSurge-not-zero",
        "instanceID-number",
        "env-boolean",
        "no-hosts",
        "device-key-typo",
    ],
)
def test_schema_rejects_wrong_values(helm: Helm, set_json: dict[str, str], complaint: str) -> None:
    proc = helm.run(*helm.template_args("spookd", "kube-system", set_json=set_json), check=False)
    assert proc.returncode != 0, f"helm accepted {set_json}"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert complaint in proc.stderr


def test_schema_level_and_format_choices_match_the_cli() -> None:
    from spookd.observe.logging import FORMATS, LEVELS

    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert schema["properties"]["logLevel"]["enum"] == list(LEVELS)
    assert schema["properties"]["logFormat"]["enum"] == list(FORMATS)


@pytest.mark.parametrize("manifest", ["plain", "chart"])
def test_every_spookd_variable_in_the_manifests_is_a_run_flag(helm: Helm, manifest: str) -> None:
    objects = _load(PLAIN) if manifest == "plain" else helm.template("spookd", "kube-system")
    env = _env(_one(objects, "DaemonSet"))
    usage = subprocess.run(
        [sys.executable, "-m", "spookd", "run", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    spookd_vars = [name for name in env if name.startswith("SPOOKD_")]
    assert spookd_vars
    for name in spookd_vars:
        flag = "--" + name.removeprefix("SPOOKD_").lower().replace("_", "-")
        assert flag in usage, f"{name} matches no flag of `spookd run`"
    assert "NODE_NAME" in env


@pytest.mark.parametrize("case", CASES)
def test_rendered_configuration_is_what_spookd_accepts(helm: Helm, case: str, tmp_path: Path) -> None:
    values_file, namespace = CASES[case]
    objects = helm.template("spookd", namespace, _values(case))
    name, key = _watched_configmap(_one(objects, "DaemonSet"))
    configmap = _one(objects, "ConfigMap")
    assert configmap["metadata"]["name"] == name
    text = configmap["data"][key]
    assert len(text.encode()) < 1024 * 1024, "a ConfigMap holds at most 1 MiB"
    rendered = load_documents(text)[0]
    source = load_documents((values_file or CHART / "values.yaml").read_text())[0]
    # Same data, same types: quoted IDs stay strings, big integers stay integers.
    exclusive = bool(source.get("rbac", {}).get("exclusive"))
    assert rendered == {
        "deviceMapping": source["deviceMapping"],
        **({"exclusive": True} if exclusive else {}),
    }
    if case == "large-mapping":
        assert sum(len(m["devices"]) for m in rendered["deviceMapping"]) == 500
    path = tmp_path / key
    path.write_text(text)
    check = subprocess.run(
        [sys.executable, "-m", "spookd", "validate", str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert check.returncode == 0, check.stderr


def test_existing_configmap_replaces_the_rendered_one(helm: Helm) -> None:
    objects = helm.template("spookd", "lab", set_json={"configMap.existingName": '"lab-devices"'})
    assert not [o for o in objects if o["kind"] == "ConfigMap"]
    assert _watched_configmap(_one(objects, "DaemonSet")) == ("lab-devices", "config.yaml")
    role = _one(objects, "Role")
    assert role["rules"][0]["resourceNames"] == ["lab-devices"]


def test_cluster_permissions_are_opt_in(helm: Helm) -> None:
    default = helm.template("spookd", "kube-system")
    assert {o["kind"] for o in default} == {
        "ServiceAccount",
        "ConfigMap",
        "Role",
        "RoleBinding",
        "DaemonSet",
    }
    everything = helm.template("spookd", "lab", _values("all-options"))
    cluster_roles = {o["metadata"]["name"]: o["rules"] for o in everything if o["kind"] == "ClusterRole"}
    assert cluster_roles == {
        "lab-devices-lab-node-status": [
            {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["get", "patch"]}
        ],
        "lab-devices-lab-node-labels": [
            {
                "apiGroups": [""],
                "resources": ["nodes"],
                "resourceNames": ["lab1-host1", "lab1-host2", "lab2-host1"],
                "verbs": ["get", "list", "watch"],
            }
        ],
    }
    lease_rules = [r for r in _one(everything, "Role")["rules"] if "leases" in r["resources"]]
    assert lease_rules
    assert lease_rules[0]["apiGroups"] == ["coordination.k8s.io"]
    bound = {o["roleRef"]["name"] for o in everything if o["kind"] == "ClusterRoleBinding"}
    assert bound == set(cluster_roles)


def test_a_node_selector_needs_the_opt_in_node_labels_rule(helm: Helm) -> None:
    mapping = '[{"nodeSelector": {"matchLabels": {"gpu": "true"}}, "devices": []}]'
    proc = helm.run(
        *helm.template_args("spookd", "kube-system", set_json={"deviceMapping": mapping}), check=False
    )
    assert proc.returncode != 0, "helm accepted a nodeSelector without rbac.nodeLabels"
    assert "deviceMapping[0] has a nodeSelector: set rbac.nodeLabels=true" in proc.stderr
    objects = helm.template(
        "spookd", "kube-system", set_json={"deviceMapping": mapping, "rbac.nodeLabels": "true"}
    )
    role = _one(objects, "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
    plain = [o for o in _load(NODE_LABELS) if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    rendered = [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    assert [(o["kind"], o["metadata"]["name"], o.get("rules"), o.get("subjects")) for o in plain] == [
        (o["kind"], o["metadata"]["name"], o.get("rules"), o.get("subjects")) for o in rendered
    ], "deploy/spookd-node-labels.yaml and the chart's rbac.nodeLabels drift apart"
    operator = (
        '[{"nodeSelector": {"matchExpressions": [{"key": "gpu", "operator": "exists"}]}, "devices": []}]'
    )
    proc = helm.run(
        *helm.template_args(
            "spookd", "kube-system", set_json={"deviceMapping": operator, "rbac.nodeLabels": "true"}
        ),
        check=False,
    )
    assert proc.returncode != 0
    assert "/deviceMapping/0/nodeSelector/matchExpressions/0/operator" in proc.stderr


# ------------------------------------------------- plain manifest vs chart: no drift


def _normal_rules(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    normal = [{k: sorted(v) for k, v in rule.items()} for rule in rules]
    return sorted(normal, key=lambda r: json.dumps(r, sort_keys=True))


def essentials(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """What a deployment means, with names and bookkeeping labels left out."""
    daemonset = _one(objects, "DaemonSet")
    spec = daemonset["spec"]
    pod = spec["template"]["spec"]
    selector = spec["selector"]["matchLabels"]
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()
    account = pod["serviceAccountName"]
    assert any(o["metadata"]["name"] == account for o in objects if o["kind"] == "ServiceAccount")
    configmap_name, key = _watched_configmap(daemonset)
    configmap = next(
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == configmap_name
    )
    roles = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Role"}
    bound_rules: list[dict[str, Any]] = []
    for binding in (o for o in objects if o["kind"] == "RoleBinding"):
        subjects = binding["subjects"]
        if any(s["kind"] == "ServiceAccount" and s["name"] == account for s in subjects):
            assert binding["roleRef"]["kind"] == "Role"
            bound_rules += roles[binding["roleRef"]["name"]]["rules"]
    rules = _normal_rules(bound_rules)
    for rule in rules:
        if rule.get("resourceNames"):
            assert rule["resourceNames"] == [configmap_name]
            rule["resourceNames"] = ["<watched ConfigMap>"]
    pod = json.loads(json.dumps(pod).replace(f"/{configmap_name}", "/<watched ConfigMap>"))
    pod["serviceAccountName"] = "<service account>"
    return {
        "namespace": daemonset["metadata"]["namespace"],
        "updateStrategy": spec["updateStrategy"],
        "podSpec": pod,
        "rules": rules,
        "configuration": load_documents(configmap["data"][key]),
    }


def test_plain_manifest_and_chart_default_describe_the_same_deployment(helm: Helm) -> None:
    plain = essentials(_load(PLAIN))
    chart = essentials(helm.template("spookd", "kube-system"))
    assert plain == chart
    # The comparison must see deep into the pod spec, or it proves nothing.
    drifted = helm.template("spookd", "kube-system", set_json={"readinessProbe.periodSeconds": "7"})
    assert essentials(drifted) != plain


# ------------------------------------------------------------ against the API server


def _assert_accepted(client: ApiClient, objects: list[dict[str, Any]], where: str) -> None:
    seen = set()
    for obj in objects:
        meta = obj["metadata"]
        identity = (obj["kind"], meta.get("namespace"), meta["name"])
        assert identity not in seen, f"{where}: {identity} rendered twice"
        seen.add(identity)
        answer = client.create(obj, dry_run=True)
        assert answer.status == 201, f"{where}: {identity}: HTTP {answer.status}: {answer.text}"
        assert answer.warnings == [], f"{where}: {identity}: warnings {answer.warnings}"


@pytest.mark.parametrize("case", CASES)
def test_rendered_objects_are_accepted_by_the_api_server(helm: Helm, admin: ApiClient, case: str) -> None:
    namespace = CASES[case][1]
    objects = helm.template("spookd", namespace, _values(case))
    for obj in objects:
        if "namespace" in obj["metadata"]:
            assert obj["metadata"]["namespace"] == namespace
    _assert_accepted(admin, objects, case)


def test_charts_are_rendered_for_the_api_servers_version(admin: ApiClient) -> None:
    assert admin.request("GET", "/version").json["gitVersion"] == KUBE_VERSION


def test_helm_installs_upgrades_and_uninstalls_the_chart(
    helm: Helm, api: ApiServer, admin: ApiClient
) -> None:
    """Helm's own apply path, through the kubeconfig the API server wrote."""
    admin.ensure(_namespace("spookd-helm", enforce="privileged"))
    common = ["--kubeconfig", str(api.kubeconfig), "--namespace", "spookd-helm"]
    helm.run("install", "spookd", str(CHART), *common)
    configmap = admin.get("v1", "ConfigMap", "spookd-config", "spookd-helm")
    assert "minikube" in configmap["data"]["config.yaml"]
    helm.run("upgrade", "spookd", str(CHART), *common, "--values", str(_values("empty-mapping")[0]))
    configmap = admin.get("v1", "ConfigMap", "spookd-config", "spookd-helm")
    assert load_documents(configmap["data"]["config.yaml"]) == [{"deviceMapping": []}]
    daemonset = admin.get("apps/v1", "DaemonSet", "spookd", "spookd-helm")
    assert daemonset["metadata"]["generation"] == 1, "a config change must not roll the pods"
    helm.run("uninstall", "spookd", *common)
    gone = admin.request("GET", "/api/v1/namespaces/spookd-helm/configmaps/spookd-config")
    assert gone.status == 404


@pytest.mark.parametrize("manifest", [PLAIN, TEST_DEPLOYMENT, NODE_LABELS], ids=lambda p: p.name)
def test_plain_manifests_are_accepted_by_the_api_server(admin: ApiClient, manifest: Path) -> None:
    _assert_accepted(admin, _load(manifest), manifest.name)


@pytest.fixture(scope="module")
def installed(admin: ApiClient) -> list[dict[str, Any]]:
    """The plain manifest, created for real in kube-system."""
    objects = _load(PLAIN)
    for obj in objects:
        admin.ensure(obj)
    admin.ensure(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "someone-elses", "namespace": "kube-system"},
            "data": {"secret-ish": "not for Spookd"},
        }
    )
    return objects


def _event(api_version: str, namespace: str) -> dict[str, Any]:
    regarding = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "spookd-config",
        "namespace": namespace,
    }
    meta = {"name": "spookd-config.18a0c1e2f3", "namespace": namespace}
    if api_version == "v1":
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": meta,
            "involvedObject": regarding,
            "reason": "ConfigApplied",
            "message": "1 resource added",
            "type": "Normal",
            "source": {"component": "spookd"},
        }
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": meta,
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "spookd",
        "reportingInstance": "spookd-minikube",
        "action": "Reconcile",
        "reason": "ConfigApplied",
        "note": "1 resource added",
        "type": "Normal",
        "regarding": regarding,
    }


def test_service_account_reads_only_its_configmap_and_records_events(
    api: ApiServer, installed: list[dict[str, Any]]
) -> None:
    # A token the API server issued to the service account, as the pod would get.
    spookd = api.client(token=api.service_account_token("kube-system", "spookd"))
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    whoami = spookd.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", body=review)
    assert whoami.json["status"]["userInfo"]["username"] == SA_USER
    base = "/api/v1/namespaces/kube-system/configmaps"
    by_name = {"fieldSelector": "metadata.name=spookd-config"}

    def status(method: str, path: str, **kwargs: Any) -> int:
        return spookd.request(method, path, **kwargs).status

    # What Spookd's watcher does (SPEC §3): get, and list/watch with a name selector.
    assert status("GET", f"{base}/spookd-config") == 200
    assert status("GET", base, query=by_name) == 200
    watch = {**by_name, "watch": "1", "timeoutSeconds": "1", "allowWatchBookmarks": "true"}
    assert status("GET", base, query=watch) == 200
    # Events on the ConfigMap, through either Events API, in its namespace only.
    for api_version in ("v1", "events.k8s.io/v1"):
        answer = spookd.create(_event(api_version, "kube-system"), dry_run=True)
        assert answer.status == 201, answer.text
        assert spookd.create(_event(api_version, "default"), dry_run=True).status == 403
    # Nothing more.
    assert status("GET", base) == 403
    assert status("GET", base, query={"fieldSelector": "metadata.name=someone-elses"}) == 403
    assert status("GET", f"{base}/someone-elses") == 403
    merge = {"content_type": "application/merge-patch+json"}
    patch = {"data": {"config.yaml": "deviceMapping: []\n"}}
    assert status("PATCH", f"{base}/spookd-config", body=patch, **merge) == 403
    assert status("GET", "/api/v1/nodes") == 403
    assert status("GET", "/api/v1/namespaces/kube-system/secrets") == 403


def _pod_from(template: Mapping[str, Any], name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**template["metadata"], "name": name, "namespace": namespace},
        "spec": {**template["spec"], "nodeName": "minikube"},
    }


def test_spookd_pod_is_admitted_in_kube_system(admin: ApiClient, installed: list[dict[str, Any]]) -> None:
    template = _one(installed, "DaemonSet")["spec"]["template"]
    answer = admin.create(_pod_from(template, "spookd-minikube", "kube-system"), dry_run=True)
    assert answer.status == 201, answer.text
    # Priority admission resolved the class: the kubelet evicts it last.
    assert answer.json["spec"]["priority"] == 2000001000


def test_spookd_pod_needs_a_privileged_namespace(admin: ApiClient) -> None:
    """The hostPath plugin directory breaks Pod Security "baseline" (NOTES.txt says so)."""
    admin.ensure(_namespace("spookd-baseline", enforce="baseline"))
    objects = _load(PLAIN)
    account = _one(objects, "ServiceAccount")
    admin.ensure({**account, "metadata": {"name": "spookd", "namespace": "spookd-baseline"}})
    template = _one(objects, "DaemonSet")["spec"]["template"]
    answer = admin.create(_pod_from(template, "spookd-minikube", "spookd-baseline"), dry_run=True)
    assert answer.status == 403
    assert "hostPath" in answer.text


def test_example_workload_meets_restricted_pod_security(admin: ApiClient) -> None:
    admin.ensure(_namespace("spookd-restricted", enforce="restricted"))
    # No controller manager here makes the "default" account; do its job.
    account = {"name": "default", "namespace": "spookd-restricted"}
    admin.ensure({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": account})
    deployment = _one(_load(TEST_DEPLOYMENT), "Deployment")
    assert deployment["spec"]["replicas"] == 2
    template = deployment["spec"]["template"]
    limits = template["spec"]["containers"][0]["resources"]["limits"]
    assert limits["example.com/widget"] == 1
    assert limits["example.com/thingamajig"] == 1
    answer = admin.create(_pod_from(template, "show-env", "spookd-restricted"), dry_run=True)
    assert answer.status == 201, answer.text
    requests = answer.json["spec"]["containers"][0]["resources"]["requests"]
    assert requests["example.com/widget"] == "1"


# -------------------------------------------------------------------- the container


def test_containerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    proc = subprocess.run(
        [str(hadolint), str(REPO / "Containerfile")], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_containerfile_runs_what_the_manifests_expect() -> None:
    lines = (REPO / "Containerfile").read_text().splitlines()
    final = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    stage = lines[final:]
    # One base for both stages (the venv's interpreter link), public by default.
    assert "ARG BASE_IMAGE=python:3.11-slim" in lines
    assert [line for line in lines if line.startswith("FROM ")] == [
        "FROM ${BASE_IMAGE} AS builder",
        "FROM ${BASE_IMAGE}",
    ]
    entrypoint = next(line for line in stage if line.startswith("ENTRYPOINT "))
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT ")) == ["/opt/spookd/bin/python", "-m", "spookd"]
    # The DaemonSet watches a ConfigMap: the image needs the [configmap] extra.
    assert any('".[configmap]"' in line for line in lines[:final])
    assert "COPY --from=builder /opt/spookd /opt/spookd" in stage
    user = next(line for line in stage if line.startswith("USER "))
    assert not user.removeprefix("USER ").startswith("0"), "the image runs non-root by default"
    assert _one(_load(PLAIN), "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["args"] == ["run"]


# ------------------------------------------------------------------ the API server


def test_api_server_restart_keeps_address_credentials_and_data(api: ApiServer, admin: ApiClient) -> None:
    marker = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "survives-restart", "namespace": "default"},
        "data": {"k": "v"},
    }
    admin.ensure(marker)
    seconds = api.restart()
    assert seconds < 60
    assert admin.get("v1", "ConfigMap", "survives-restart", "default")["data"] == {"k": "v"}
    api.down()
    try:
        admin.request("GET", "/version", timeout=5)
    except OSError:
        pass  # refused or cut off, as a server that is down should be
    else:
        pytest.fail("the API server answered while down")
    api.up()
    assert admin.request("GET", "/readyz").status == 200
