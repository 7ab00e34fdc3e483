"""DRA mode's publisher against a real kube-apiserver: slices, classes, generations, leader changes.

Every test watches this driver's ResourceSlices from before the publisher starts and
replays the watch event by event: at no moment may a device be visible twice (in the
slices of its pool's highest generation), and across a restart or a leader change
no device may go missing either.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.apiserver import ApiClient, ApiServer

pytestmark = [pytest.mark.apiserver]

DRIVER = "spookd.skao.int"
SLICES = "/apis/resource.k8s.io/v1/resourceslices"

CONFIG = """\
deviceMapping:
  - hosts: [h1, h2]
    devices:
      - resourceName: example.com/widget
        instanceID: "w0"
        env: {PORT: "5000"}
  - hosts: [h1]
    devices:
      - resourceName: example.com/widget
        instanceID: "w1"
        env: {PORT: "5001"}
      - resourceName: example.com/gadget
        instanceID: "g1"
"""


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class SliceWatch:
    """Every ADDED/MODIFIED/DELETED of this driver's slices, in the server's order."""

    def __init__(self, apiserver: ApiServer) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._apiserver = apiserver
        self._stop = False
        listing = apiserver.client().request("GET", SLICES, query={"fieldSelector": f"spec.driver={DRIVER}"})
        self.initial = listing.json.get("items", [])
        self._rv = listing.json["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        query = urllib.parse.urlencode(
            {"watch": "1", "resourceVersion": self._rv, "fieldSelector": f"spec.driver={DRIVER}"}
        )
        request = urllib.request.Request(
            f"{self._apiserver.server}{SLICES}?{query}",
            headers={"Authorization": f"Bearer {self._apiserver.token}"},
        )
        context = ssl.create_default_context(cafile=str(self._apiserver.ca_file))
        with urllib.request.urlopen(request, context=context, timeout=600) as stream:
            for line in stream:
                if self._stop:
                    return
                event = json.loads(line)
                self.events.append((event["type"], event["object"]))

    def states(self) -> Iterator[dict[str, dict[str, Any]]]:
        """The driver's slices after each event."""
        state = {s["metadata"]["name"]: s for s in self.initial}
        yield dict(state)
        for kind, obj in list(self.events):
            if kind == "DELETED":
                state.pop(obj["metadata"]["name"], None)
            else:
                state[obj["metadata"]["name"]] = obj
            yield dict(state)

    def current(self) -> dict[str, dict[str, Any]]:
        last: dict[str, dict[str, Any]] = {}
        for last in self.states():  # noqa: B007
            pass
        return last

    def close(self) -> None:
        self._stop = True


def visible(state: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """Devices a consumer sees: the slices of each pool's highest generation."""
    best: dict[str, int] = {}
    for s in state.values():
        pool = s["spec"]["pool"]
        best[pool["name"]] = max(best.get(pool["name"], 0), pool["generation"])
    seen = []
    for s in state.values():
        pool = s["spec"]["pool"]
        if pool["generation"] != best[pool["name"]]:
            continue
        for device in s["spec"].get("devices", []):
            attributes = device["attributes"]
            seen.append(
                (attributes[f"{DRIVER}/resource"]["string"], attributes[f"{DRIVER}/instanceID"]["string"])
            )
    return seen


def pools(state: dict[str, dict[str, Any]]) -> dict[str, tuple[int, set[tuple[str, str]]]]:
    out: dict[str, tuple[int, set[tuple[str, str]]]] = {}
    for s in state.values():
        pool = s["spec"]["pool"]
        devices = {
            (
                d["attributes"][f"{DRIVER}/resource"]["string"],
                d["attributes"][f"{DRIVER}/instanceID"]["string"],
            )
            for d in s["spec"].get("devices", [])
        }
        gen, have = out.get(pool["name"], (0, set()))
        out[pool["name"]] = (max(gen, pool["generation"]), have | devices)
    return out


class Publisher:
    """``spookd publish`` as a subprocess."""

    def __init__(self, apiserver: ApiServer, config: Path, namespace: str, identity: str, log: Path) -> None:
        self.log = log
        env = {
            **os.environ,
            "KUBECONFIG": str(apiserver.kubeconfig),
            "SPOOKD_LEASE_DURATION": "3",
            "SPOOKD_LOG_FORMAT": "json",
        }
        env.pop("KUBERNETES_SERVICE_HOST", None)
        self._log_file = log.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "spookd",
                "publish",
                "--config",
                str(config),
                "--lease-namespace",
                namespace,
                "--identity",
                identity,
            ],
            env=env,
            stdout=self._log_file,
            stderr=self._log_file,
        )

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def said(self, text: str) -> bool:
        return any(text in json.dumps(r) for r in self.records())

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=30)
        self._log_file.close()
        return code


@pytest.fixture
def cleanup(apiserver: ApiServer) -> Iterator[list[Publisher]]:
    started: list[Publisher] = []
    yield started
    for publisher in started:
        publisher.stop(signal.SIGKILL)
    api = apiserver.client()
    api.request("DELETE", SLICES, query={"fieldSelector": f"spec.driver={DRIVER}"})
    api.request(
        "DELETE",
        "/apis/resource.k8s.io/v1/deviceclasses",
        query={"labelSelector": "app.kubernetes.io/managed-by=spookd"},
    )


def new_namespace(api: ApiClient, name: str) -> str:
    api.ensure({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def test_publishes_pools_and_classes_and_bumps_generations_without_a_device_twice(
    apiserver: ApiServer, tmp_path: Path, cleanup: list[Publisher]
) -> None:
    api = apiserver.client()
    namespace = new_namespace(api, "dra-publish-1")
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    watch = SliceWatch(apiserver)
    publisher = Publisher(apiserver, config, namespace, "p1", tmp_path / "p1.log")
    cleanup.append(publisher)
    wait_until(lambda: len(visible(watch.current())) == 3, what="three devices published")
    state = pools(watch.current())
    assert state["h1"][1] == {("example.com/widget", "w1"), ("example.com/gadget", "g1")}
    shared = next(name for name in state if name.startswith("shared-"))
    assert state[shared][1] == {("example.com/widget", "w0")}
    classes = api.request(
        "GET",
        "/apis/resource.k8s.io/v1/deviceclasses",
        query={"labelSelector": "app.kubernetes.io/managed-by=spookd"},
    ).json["items"]
    assert sorted((c["metadata"]["name"], c["spec"]["extendedResourceName"]) for c in classes) == [
        ("gadget.example.com", "example.com/gadget"),
        ("widget.example.com", "example.com/widget"),
    ]
    generation = state["h1"][0]

    # An edit of one device: its pool gets a new generation, the other pool is not written.
    before = len(watch.events)
    config.write_text(CONFIG.replace('PORT: "5001"', 'PORT: "6001"'))
    wait_until(lambda: pools(watch.current())["h1"][0] == generation + 1, what="a new generation of h1")
    time.sleep(1)
    changed = {obj["spec"]["pool"]["name"] for _, obj in watch.events[before:]}
    assert changed == {"h1"}

    # w1 moves to the shared pool and w0 to h1 alone: a swap between two pools.
    first, second = CONFIG.split("  - hosts: [h1]\n")
    config.write_text(first.replace("hosts: [h1, h2]", "hosts: [h1]") + "  - hosts: [h1, h2]\n" + second)
    wait_until(
        lambda: (
            ("example.com/widget", "w0") in pools(watch.current()).get("h1", (0, set()))[1]
            and len(visible(watch.current())) == 3
        ),
        what="the swap",
    )
    # A pool that is no longer configured loses its slices.
    config.write_text(
        "deviceMapping:\n  - hosts: [h3]\n    devices:\n      - {resourceName: example.com/widget, instanceID: w9}\n"
    )
    wait_until(lambda: set(pools(watch.current())) == {"h3"}, what="only h3's pool left")
    for state_now in watch.states():
        seen = visible(state_now)
        assert len(seen) == len(set(seen)), seen
    assert publisher.stop() == 0


def test_restart_and_leader_change_write_nothing_and_lose_nothing(
    apiserver: ApiServer, tmp_path: Path, cleanup: list[Publisher]
) -> None:
    api = apiserver.client()
    namespace = new_namespace(api, "dra-publish-2")
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    first = Publisher(apiserver, config, namespace, "first", tmp_path / "first.log")
    cleanup.append(first)
    watch = SliceWatch(apiserver)
    wait_until(lambda: len(visible(watch.current())) == 3, what="three devices published")
    wait_until(lambda: first.said("leading"), what="the first publisher leading")
    second = Publisher(apiserver, config, namespace, "second", tmp_path / "second.log")
    cleanup.append(second)
    time.sleep(2)
    assert not second.said('"leading"')
    settled = len(watch.events)
    # A graceful stop releases the Lease: the second takes over at once.
    assert first.stop() == 0
    wait_until(lambda: second.said('"leading"'), timeout=15, what="the second publisher leading")
    time.sleep(2)
    # A killed leader: a third takes over after the Lease duration by observation.
    third = Publisher(apiserver, config, namespace, "third", tmp_path / "third.log")
    cleanup.append(third)
    time.sleep(1)
    second.stop(signal.SIGKILL)
    wait_until(lambda: third.said('"leading"'), timeout=20, what="the third publisher leading")
    time.sleep(2)
    assert watch.events[settled:] == []
    for state_now in watch.states():
        seen = visible(state_now)
        if state_now:
            assert sorted(seen) == sorted(set(seen))
    assert len(visible(watch.current())) == 3
    watch.close()
