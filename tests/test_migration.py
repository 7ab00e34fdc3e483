"""Values written for the Go original's chart install this chart with the same effect,
or fail naming the key to rename (docs/migrating.md). Real Helm: lint and template.

The original's chart (ska-ser-k8s-spookd 0.2) has the values `deviceMapping`,
`nodeSelector`, `tolerations`, `kubeletPath`, `daemon.logLevel`, `image`,
`serviceAccount`, `podAnnotations`, `resources`, `nameOverride` and
`fullnameOverride`; its DaemonSet mounts `<kubeletPath>/device-plugins` and reads the
ConfigMap key `config.yml`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.helm import Helm, load_documents

from spookd.config import load_config

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "spookd"
ORIGINAL = ROOT / "tests" / "data" / "helm-original" / "original-values.yaml"


@pytest.fixture(scope="module")
def helm() -> Helm:
    return Helm.build(CHART)


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def _pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = _one(objects, "DaemonSet")["spec"]["template"]
    return spec


def _env(objects: list[dict[str, Any]]) -> dict[str, Any]:
    container = _pod(objects)["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def _volumes(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {v["name"]: v["hostPath"]["path"] for v in _pod(objects)["spec"]["volumes"] if "hostPath" in v}


def _render_fails(helm: Helm, values: dict[str, Any], tmp_path: Path) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(json.dumps(values))
    proc = helm.run(*helm.template_args("spookd", "kube-system", [path]), check=False)
    assert proc.returncode != 0, f"helm template accepted {values}"
    # Helm's lint mode logs a template's `fail` instead of stopping (exit 0): the
    # message must still be there for the operator to read.
    lint = helm.lint([path], check=False)
    assert complaint_of(proc.stderr) in lint.stdout + lint.stderr
    return proc.stderr


def complaint_of(stderr: str) -> str:
    """The message of a failed render: what `fail` or the schema said."""
    lines = [line for line in stderr.splitlines() if line.strip() and "--debug" not in line]
    return lines[-1].split("): ", 1)[-1].strip()


def test_the_originals_values_lint_strictly(helm: Helm) -> None:
    helm.lint([ORIGINAL])


def test_the_originals_values_have_the_same_effect(helm: Helm) -> None:
    values = load_documents(ORIGINAL.read_text())[0]
    objects = helm.template("spookd", "kube-system", [ORIGINAL])
    pod = _pod(objects)
    assert pod["spec"]["nodeSelector"] == values["nodeSelector"]
    assert pod["spec"]["tolerations"] == values["tolerations"]
    assert pod["metadata"]["annotations"] == values["podAnnotations"]
    assert _env(objects)["SPOOKD_LOG_LEVEL"] == "warning"  # the original's `warn`
    plugins = "/var/snap/microk8s/common/var/lib/kubelet/device-plugins"
    assert _volumes(objects)["device-plugins"] == plugins
    assert _one(objects, "ServiceAccount")["metadata"]["name"] == "spookd-spookd-device-plugin"
    # The devices: the same mapping, in a ConfigMap Spookd accepts.
    configmap = _one(objects, "ConfigMap")
    text = configmap["data"][_env(objects)["SPOOKD_CONFIGMAP_KEY"]]
    assert load_documents(text)[0] == {"deviceMapping": values["deviceMapping"]}
    config = load_config(text, "rendered")
    assert sorted(config.for_node("za-itf-cloud03")) == [
        "skao.int/oscilloscope",
        "skao.int/signal-generator-01",
    ]


def test_kubelet_path_also_moves_the_pod_resources_socket(helm: Helm) -> None:
    objects = helm.template("spookd", "kube-system", [ORIGINAL], set_json={"rbac": '{"exclusive": true}'})
    assert _volumes(objects)["pod-resources"] == "/var/snap/microk8s/common/var/lib/kubelet/pod-resources"


def test_without_the_originals_keys_nothing_moves(helm: Helm) -> None:
    objects = helm.template("spookd", "kube-system", set_json={"rbac": '{"exclusive": true}'})
    assert _volumes(objects) == {
        "device-plugins": "/var/lib/kubelet/device-plugins",
        "pod-resources": "/var/lib/kubelet/pod-resources",
    }
    assert _env(objects)["SPOOKD_LOG_LEVEL"] == "info"


@pytest.mark.parametrize(
    ("old", "new"), [("debug", "debug"), ("info", "info"), ("warn", "warning"), ("ERROR", "error")]
)
def test_daemon_log_level_becomes_log_level(helm: Helm, old: str, new: str) -> None:
    objects = helm.template("spookd", "kube-system", set_json={"daemon": json.dumps({"logLevel": old})})
    assert _env(objects)["SPOOKD_LOG_LEVEL"] == new


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        (
            {"image": {"repository": "artefact.skao.int/ska-ser-k8s-spookd", "tag": "0.2.2"}},
            "image.repository artefact.skao.int/ska-ser-k8s-spookd is the Go original's image",
        ),
        ({"daemon": {"logLevel": "verbose"}}, "rename daemon.logLevel to logLevel"),
        ({"daemon": {"logLevel": "debug"}, "logLevel": "error"}, "rename daemon.logLevel to logLevel"),
        (
            {"kubeletPath": "/var/lib/k0s/kubelet", "pluginDir": "/opt/plugins"},
            "rename kubeletPath to pluginDir: /var/lib/k0s/kubelet/device-plugins",
        ),
        ({"daemon": {"logLevel": "info", "verbose": True}}, "/daemon"),
    ],
    ids=["original-image", "unknown-level", "two-levels", "two-plugin-dirs", "unknown-daemon-key"],
)
def test_what_cannot_keep_its_effect_fails_naming_the_key(
    helm: Helm, values: dict[str, Any], complaint: str, tmp_path: Path
) -> None:
    assert complaint in _render_fails(helm, values, tmp_path)


def test_the_chart_works_as_a_subchart_with_a_condition(helm: Helm, tmp_path: Path) -> None:
    # An umbrella chart's `condition: spookd.enabled` hands `enabled` to the subchart.
    values = tmp_path / "values.yaml"
    values.write_text(json.dumps({"enabled": True, "global": {"minikube": True}}))
    helm.lint([values])
