"""DRA mode's publisher as the tests run it: ``spookd publish`` as a subprocess, a watch of its slices.

``SliceWatch`` records every ADDED/MODIFIED/DELETED of the driver's ResourceSlices in
the API server's order, so a test can replay the states a consumer saw one by one.
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

from support.apiserver import ApiClient, ApiServer

DRIVER = "spookd.skao.int"
SLICES = "/apis/resource.k8s.io/v1/resourceslices"
CLASSES = "/apis/resource.k8s.io/v1/deviceclasses"


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

    def __init__(
        self,
        apiserver: ApiServer,
        config: Path,
        namespace: str,
        identity: str,
        log: Path,
        *,
        lease: str = "3",
    ) -> None:
        self.log = log
        env = {
            **os.environ,
            "KUBECONFIG": str(apiserver.kubeconfig),
            "SPOOKD_LEASE_DURATION": lease,
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


def remove_everything(apiserver: ApiServer, started: list[Publisher]) -> None:
    """Stop the publishers and delete what they published."""
    for publisher in started:
        publisher.stop(signal.SIGKILL)
    api = apiserver.client()
    api.request("DELETE", SLICES, query={"fieldSelector": f"spec.driver={DRIVER}"})
    api.request("DELETE", CLASSES, query={"labelSelector": "app.kubernetes.io/managed-by=spookd"})


def new_namespace(api: ApiClient, name: str) -> str:
    """A namespace (with its default ServiceAccount, which no controller makes here)."""
    api.ensure({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    api.ensure(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": name}}
    )
    return name
