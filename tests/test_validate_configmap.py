"""`spookd validate --configmap NAMESPACE/NAME` against a real kube-apiserver (SPEC §6).

Spookd runs as a process with a kubeconfig, as in a CI pipeline: the admin's, or a
ServiceAccount token that may not read ConfigMaps.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.apiserver import ApiClient, ApiServer

pytestmark = [pytest.mark.apiserver]

ROOT = Path(__file__).resolve().parent.parent
GOOD = (ROOT / "tests" / "data" / "good" / "lab.yaml").read_text()
BAD = "deviceMapping:\n  - hosts: [lab1]\n    devices:\n      - {resourceName: a.io/x, instanceID: 0001}\n"
NAMESPACE = "spookd-validate"


def spookd(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPOOKD_", "KUBERNETES_"))}
    return subprocess.run(
        [sys.executable, "-m", "spookd", "validate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "KUBECONFIG": str(kubeconfig)},
        check=False,
    )


def configmap(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "data": data,
    }


@pytest.fixture(scope="module")
def admin(apiserver: ApiServer) -> ApiClient:
    client = apiserver.client()
    client.ensure({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    client.ensure(configmap("good", {"config.yaml": GOOD}))
    client.ensure(configmap("bad", {"config.yaml": BAD}))
    client.ensure(configmap("original", {"config.yml": GOOD}))
    return client


def test_a_valid_configmap_is_ok(apiserver: ApiServer, admin: ApiClient) -> None:
    result = spookd(apiserver.kubeconfig, "--configmap", f"{NAMESPACE}/good")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{NAMESPACE}/good:config.yaml: OK (2 mappings, 3 devices, 3 nodes)\n"
    assert result.stderr == ""


def test_an_invalid_configmap_reports_its_errors_in_json(apiserver: ApiServer, admin: ApiClient) -> None:
    result = spookd(apiserver.kubeconfig, "--configmap", f"{NAMESPACE}/bad", "--output", "json")
    assert result.returncode == 2
    out = json.loads(result.stdout)
    source = f"{NAMESPACE}/bad:config.yaml"
    assert out["sources"] == [{"source": source, "valid": False}]
    (error,) = out["errors"]
    assert (error["source"], error["line"], error["column"]) == (source, 4, 44)
    assert error["path"] == "deviceMapping[0].devices[0].instanceID"
    assert "quote it" in error["message"]


def test_files_stdin_and_configmaps_in_one_run(apiserver: ApiServer, admin: ApiClient) -> None:
    good = ROOT / "tests" / "data" / "good" / "walkthrough.yaml"
    result = spookd(
        apiserver.kubeconfig,
        str(good), "--configmap", f"{NAMESPACE}/good", "--configmap", f"{NAMESPACE}/bad",
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        f"{good}: OK (1 mappings, 2 devices, 1 nodes)",
        f"{NAMESPACE}/good:config.yaml: OK (2 mappings, 3 devices, 3 nodes)",
    ]
    assert result.stderr.startswith(
        f"{NAMESPACE}/bad:config.yaml:4:44: deviceMapping[0].devices[0].instanceID"
    )


def test_the_key_is_chosen_with_configmap_key(apiserver: ApiServer, admin: ApiClient) -> None:
    # The Go original's chart keeps the configuration under `config.yml`.
    missing = spookd(apiserver.kubeconfig, "--configmap", f"{NAMESPACE}/original")
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        f"{NAMESPACE}/original:config.yaml:1:1: the ConfigMap has no key `config.yaml` (it has: config.yml); "
        "put the configuration under that key or set --configmap-key"
    )
    found = spookd(
        apiserver.kubeconfig, "--configmap", f"{NAMESPACE}/original", "--configmap-key", "config.yml"
    )
    assert found.returncode == 0, found.stderr


def test_a_missing_configmap_is_an_error_naming_it(apiserver: ApiServer, admin: ApiClient) -> None:
    result = spookd(apiserver.kubeconfig, "--configmap", f"{NAMESPACE}/nothing")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"{NAMESPACE}/nothing:config.yaml:1:1: ConfigMap {NAMESPACE}/nothing does not exist; "
        "check the namespace and the name"
    )


def test_no_permission_is_an_error_naming_the_verb(
    apiserver: ApiServer, admin: ApiClient, tmp_path: Path
) -> None:
    admin.ensure(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "ci", "namespace": NAMESPACE}}
    )
    token = apiserver.service_account_token(NAMESPACE, "ci")
    kubeconfig = apiserver.write_kubeconfig(tmp_path / "ci.kubeconfig", token, namespace=NAMESPACE)
    result = spookd(kubeconfig, "--configmap", f"{NAMESPACE}/good")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"not allowed to read ConfigMap {NAMESPACE}/good (403 Forbidden)" in result.stderr
    assert "needs `get` on configmaps" in result.stderr


def test_no_credentials_and_no_api_server_are_errors_not_tracebacks(
    apiserver: ApiServer, tmp_path: Path
) -> None:
    none = spookd(tmp_path / "no-such-kubeconfig", "--configmap", f"{NAMESPACE}/good")
    assert none.returncode == 2
    assert none.stderr.startswith(f"{NAMESPACE}/good:config.yaml:1:1: no Kubernetes credentials")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = yaml.safe_load(apiserver.kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{port}"
    unreachable = tmp_path / "unreachable.kubeconfig"
    unreachable.write_text(json.dumps(config))
    down = spookd(unreachable, "--configmap", f"{NAMESPACE}/good")
    assert down.returncode == 2
    assert "Traceback" not in down.stderr
    assert down.stderr.startswith(
        f"{NAMESPACE}/good:config.yaml:1:1: cannot reach the Kubernetes API to read ConfigMap {NAMESPACE}/good"
    )
