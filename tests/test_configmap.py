"""The ConfigMap source against a real kube-apiserver, with the real device manager (SPEC §3).

Spookd runs as a process with `--configmap`, authenticating with a kubeconfig: the
admin's, or a ServiceAccount token bound to the Role of deploy/.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import SpookdProcess
from support.apiserver import ApiClient, ApiServer
from support.nodeharness import NodeHarness, Resources

pytestmark = [pytest.mark.apiserver, pytest.mark.harness]

WIDGET = "example.com/widget"
THING = "example.com/thingamajig"
ROOT = Path(__file__).resolve().parent.parent
_namespaces = itertools.count()


def config(widgets: int = 1, *, broken: bool = False) -> str:
    devices = "".join(
        f'      - {{resourceName: example.com/widget, instanceID: "{i:04d}", env: {{IP: 10.0.0.{i}}}}}\n'
        for i in range(1, widgets + 1)
    )
    devices += "      - {resourceName: example.com/thingamajig, instanceID: A1234}\n"
    if broken:
        devices += "      - {resourceName: example.com/widget, instanceID: 0042}\n"
    return f"deviceMapping:\n  - hosts: [minikube]\n    devices:\n{devices}"


def configmap(namespace: str, text: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "spookd-config", "namespace": namespace},
        "data": {"config.yaml": text},
    }


def new_namespace(api: ApiClient) -> str:
    name = f"spookd-test-{next(_namespaces)}-{int(time.time() * 1000) % 100000}"
    api.ensure({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def put(api: ApiClient, namespace: str, text: str) -> None:
    path = api.path("v1", "ConfigMap", namespace, "spookd-config")
    answer = api.request("PUT", path, body=configmap(namespace, text))
    assert answer.status == 200, answer.text


def events(api: ApiClient, namespace: str) -> list[dict[str, Any]]:
    answer = api.request("GET", f"/api/v1/namespaces/{namespace}/events")
    assert answer.status == 200, answer.text
    return [e for e in answer.json["items"] if e["involvedObject"]["name"] == "spookd-config"]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        time.sleep(0.05)


def widgets_served(n: int) -> Callable[[Resources], bool]:
    return lambda r: r.is_registered(WIDGET) and r.capacity(WIDGET) == n and r.allocatable(WIDGET) == n


def serving_from_a_configmap(
    apiserver: ApiServer, node: NodeHarness, spookd: SpookdProcess
) -> tuple[ApiClient, str]:
    """A new namespace whose ConfigMap (one widget) Spookd serves, with the admin's kubeconfig."""
    api = apiserver.client()
    namespace = new_namespace(api)
    assert api.create(configmap(namespace, config(1))).status == 201
    spookd.start(configmap=f"{namespace}/spookd-config", kubeconfig=apiserver.kubeconfig)
    node.wait_for(widgets_served(1), timeout=20)
    return api, namespace


def test_create_update_reject_fix_delete_recreate(
    apiserver: ApiServer, node: NodeHarness, spookd: SpookdProcess, plugin_dir: Path
) -> None:
    api = apiserver.client()
    namespace = new_namespace(api)
    spookd.start(configmap=f"{namespace}/spookd-config", kubeconfig=apiserver.kubeconfig)
    wait_until(lambda: "ConfigMap does not exist" in spookd.log_text(), what="missing-ConfigMap warning")

    assert api.create(configmap(namespace, config(1))).status == 201
    node.wait_for(widgets_served(1), timeout=20)

    put(api, namespace, config(2))
    node.wait_for(widgets_served(2))

    put(api, namespace, config(3, broken=True))
    wait_until(
        lambda: any(e["reason"] == "ConfigRejected" for e in events(api, namespace)), what="Warning Event"
    )
    rejected = next(e for e in events(api, namespace) if e["reason"] == "ConfigRejected")
    assert rejected["type"] == "Warning"
    assert f"{namespace}/spookd-config:config.yaml:8:56" in rejected["message"]
    assert 'quote it: instanceID: "0042"' in rejected["message"]
    assert node.resources().capacity(WIDGET) == 2, "the last good configuration must keep serving"

    put(api, namespace, config(3))
    node.wait_for(widgets_served(3))
    applied = [e for e in events(api, namespace) if e["reason"] == "ConfigApplied"]
    assert applied, "no Normal Event for the applied configuration"
    assert all(e["type"] == "Normal" for e in applied)
    assert any("added example.com/thingamajig, example.com/widget" in e["message"] for e in applied)
    assert any("changed example.com/widget" in e["message"] for e in applied)

    answer = api.request("DELETE", api.path("v1", "ConfigMap", namespace, "spookd-config"))
    assert answer.status == 200, answer.text
    node.wait_for(lambda r: r.capacity(WIDGET) == 0 and r.capacity(THING) == 0)
    wait_until(lambda: not list(plugin_dir.glob("spookd-*.sock")), what="sockets removed")
    assert any(r["message"].startswith("configuration deleted") for r in spookd.records())

    assert api.create(configmap(namespace, config(1))).status == 201
    node.wait_for(widgets_served(1), timeout=20)
    assert spookd.stop() == 0


def test_watch_survives_an_api_server_restart_without_a_reconnect_storm(
    apiserver: ApiServer, node: NodeHarness, spookd: SpookdProcess
) -> None:
    api, namespace = serving_from_a_configmap(apiserver, node, spookd)

    apiserver.restart()
    put(api, namespace, config(2))  # made while Spookd may still be reconnecting
    node.wait_for(widgets_served(2), timeout=30)

    apiserver.down()
    time.sleep(3)
    apiserver.up()
    put(api, namespace, config(3))
    node.wait_for(widgets_served(3), timeout=45)

    requests = [r for r in spookd.records() if r["message"] in ("listing ConfigMap", "watching ConfigMap")]
    # one list and one watch at start, then a few reconnects with backoff: never a storm
    assert len(requests) <= 20, f"{len(requests)} list/watch requests"
    assert spookd.stop() == 0


def _manifest_rbac(namespace: str) -> list[dict[str, Any]]:
    """The ServiceAccount, Role and RoleBinding of deploy/, moved into ``namespace``."""
    docs = yaml.safe_load_all((ROOT / "deploy" / "spookd-device-plugin.yaml").read_text())
    wanted = []
    for doc in docs:
        if doc and doc["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
            doc["metadata"]["namespace"] = namespace
            for subject in doc.get("subjects", []):
                subject["namespace"] = namespace
            wanted.append(doc)
    assert {d["kind"] for d in wanted} == {"ServiceAccount", "Role", "RoleBinding"}
    return wanted


def test_service_account_bound_to_the_role_works(
    apiserver: ApiServer, node: NodeHarness, spookd: SpookdProcess, tmp_path: Path
) -> None:
    api = apiserver.client()
    namespace = new_namespace(api)
    for obj in _manifest_rbac(namespace):
        api.ensure(obj)
    assert api.create(configmap(namespace, config(1))).status == 201
    token = apiserver.service_account_token(namespace, "spookd")
    kubeconfig = apiserver.write_kubeconfig(tmp_path / "sa.kubeconfig", token, namespace=namespace)
    spookd.start(configmap=f"{namespace}/spookd-config", kubeconfig=kubeconfig)
    node.wait_for(widgets_served(1), timeout=20)
    wait_until(lambda: any(e["reason"] == "ConfigApplied" for e in events(api, namespace)), what="Event")
    assert "not allowed" not in spookd.log_text()


def test_without_a_binding_one_clear_permission_error_and_retries(
    apiserver: ApiServer, spookd: SpookdProcess, tmp_path: Path
) -> None:
    api = apiserver.client()
    namespace = new_namespace(api)
    api.ensure(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "spookd", "namespace": namespace}}
    )
    assert api.create(configmap(namespace, config(1))).status == 201
    token = apiserver.service_account_token(namespace, "spookd")
    kubeconfig = apiserver.write_kubeconfig(tmp_path / "sa.kubeconfig", token, namespace=namespace)
    spookd.start(configmap=f"{namespace}/spookd-config", kubeconfig=kubeconfig)
    wait_until(lambda: "not allowed to read ConfigMap" in spookd.log_text(), what="permission error")
    time.sleep(3)  # keeps retrying with backoff, without repeating the error
    errors = [r for r in spookd.records() if r["level"] == "error"]
    assert len(errors) == 1, errors
    assert "bind the Role `watch-configmaps`" in errors[0]["message"]
    assert spookd.process is not None
    assert spookd.process.poll() is None, "Spookd must keep running and retrying"
    assert spookd.stop() == 0


def test_watch_relists_after_410_gone_without_losing_an_update(
    apiserver: ApiServer, node: NodeHarness, spookd: SpookdProcess
) -> None:
    api, namespace = serving_from_a_configmap(apiserver, node, spookd)

    # Writes elsewhere move the store's revision past what Spookd last saw; after a
    # compaction and a restart of the API server (a fresh watch cache), resuming
    # from Spookd's resourceVersion can only answer 410 Gone.
    other = {**configmap(namespace, "x"), "metadata": {"name": "unrelated", "namespace": namespace}}
    assert api.create(other).status == 201
    for i in range(5):
        other["data"] = {"v": str(i)}
        assert (
            api.request("PUT", api.path("v1", "ConfigMap", namespace, "unrelated"), body=other).status == 200
        )
    apiserver.compact()
    apiserver.restart()
    put(api, namespace, config(2))
    node.wait_for(widgets_served(2), timeout=30)
    assert any(r["message"].startswith("watch expired (410 Gone)") for r in spookd.records()), (
        spookd.log_text()
    )
    requests = [r for r in spookd.records() if r["message"] in ("listing ConfigMap", "watching ConfigMap")]
    assert len(requests) <= 12, f"{len(requests)} list/watch requests"
    assert spookd.stop() == 0


def test_registration_failing_for_long_is_a_warning_event(
    apiserver: ApiServer, spookd: SpookdProcess
) -> None:
    api = apiserver.client()
    namespace = new_namespace(api)
    assert api.create(configmap(namespace, config(1))).status == 201
    # no kubelet in the plugin directory: registration keeps failing
    spookd.start(
        configmap=f"{namespace}/spookd-config",
        kubeconfig=apiserver.kubeconfig,
        env={"SPOOKD_REGISTRATION_EVENT_AFTER": "1"},
    )

    def failing() -> list[dict[str, Any]]:
        return [e for e in events(api, namespace) if e["reason"] == "RegistrationFailing"]

    wait_until(lambda: len(failing()) >= 2, timeout=20, what="a RegistrationFailing Event per resource")
    reported = failing()
    assert {e["type"] for e in reported} == {"Warning"}
    uid = api.get("v1", "ConfigMap", "spookd-config", namespace)["metadata"]["uid"]
    assert {e["involvedObject"].get("uid") for e in reported} == {uid}
    messages = sorted(e["message"] for e in reported)
    assert "example.com/thingamajig is not registered with the kubelet" in messages[0]
    assert "example.com/widget is not registered with the kubelet" in messages[1]
    assert all("kubelet.sock does not exist" in m for m in messages)
    time.sleep(2)
    assert len(failing()) == 2, "one Event per resource, not one per retry"
    assert spookd.stop() == 0


def test_watches_that_the_server_ends_are_resumed_without_loss(
    apiserver: ApiServer, node: NodeHarness, spookd: SpookdProcess
) -> None:
    # Four server-side watch timeouts in a row: each watch is resumed from the last
    # resourceVersion, and an update made after them is seen. (Bookmarks, which the
    # test API server seldom sends this early, are covered by test_configmap_events.py.)
    api = apiserver.client()
    namespace = new_namespace(api)
    assert api.create(configmap(namespace, config(1))).status == 201
    spookd.start(
        configmap=f"{namespace}/spookd-config",
        kubeconfig=apiserver.kubeconfig,
        env={"SPOOKD_WATCH_TIMEOUT": "8"},
    )
    node.wait_for(widgets_served(1), timeout=20)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert spookd.process is not None
        assert spookd.process.poll() is None, spookd.log_text()[-3000:]
        time.sleep(1)
    put(api, namespace, config(2))
    node.wait_for(widgets_served(2), timeout=20)
    assert "unexpected answer" not in spookd.log_text()
    assert spookd.stop() == 0
