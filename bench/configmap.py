"""ConfigMap source figures through a real kube-apiserver: change latency, start-up, memory."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

from support.apiserver import ApiClient, ApiServer
from support.nodeharness import NodeHarness

from bench.common import WIDGET, Figure, Spookd, Target, fmt, resources_config, short_dir, wait_until
from bench.node import Poller, all_served, widgets

NAMESPACE = "bench"

FLOOR_SCRIPT = (
    "import kubernetes_asyncio.client\n"
    "for line in open('/proc/self/status'):\n"
    "    if line.startswith('VmRSS:'): print(line.split()[1])\n"
)


def _configmap(name: str, text: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "data": {"config.yaml": text},
    }


def _put(api: ApiClient, name: str, text: str) -> None:
    path = api.path("v1", "ConfigMap", NAMESPACE, name)
    answer = api.request("PUT", path, body=_configmap(name, text))
    if answer.status == 404:
        answer = api.create(_configmap(name, text))
    if answer.status not in (200, 201):
        raise RuntimeError(f"PUT {path}: {answer.status} {answer.text}")


def floor_mib(reps: int = 3) -> list[float]:
    """VmRSS of a bare interpreter that imported kubernetes_asyncio.client."""
    out = []
    for _ in range(reps):
        done = subprocess.run(
            [sys.executable, "-c", FLOOR_SCRIPT], capture_output=True, text=True, check=True
        )
        out.append(int(done.stdout.strip()) / 1024)
    return out


def measure(change_reps: int, start_reps: int) -> list[Figure]:
    workdir = short_dir("bcm-w-")
    plugin_dir = short_dir("bcm-")
    figures: list[Figure] = []
    try:
        with ApiServer.start(workdir / "apiserver") as server, NodeHarness(log_dir=workdir) as node:
            api = server.client()
            api.ensure({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
            node.start(plugin_dir)
            poller = Poller(node)

            def spookd(name: str) -> Spookd:
                return Spookd(
                    workdir, plugin_dir, configmap=f"{NAMESPACE}/{name}", kubeconfig=server.kubeconfig
                )

            # config change → kubelet
            _put(api, "change", widgets(8))
            process = spookd("change").start()
            latencies, puts = [], []
            try:
                poller.until(all_served([WIDGET], 8), timeout=60)
                for i in range(change_reps):
                    n = 9 if i % 2 == 0 else 8
                    time.sleep(0.2)
                    started = time.monotonic()
                    _put(api, "change", widgets(n))
                    puts.append((time.monotonic() - started) * 1000)
                    latencies.append((poller.until(all_served([WIDGET], n), timeout=10) - started) * 1000)
            finally:
                process.stop()
            wait_until(lambda: not node.resources().registered, 30, "endpoints stopped", 0.02)
            figures.append(
                Figure(
                    name="config change → kubelet has it (ConfigMap)",
                    unit="ms",
                    values=latencies,
                    target=Target(300, "≤ 300 ms"),
                    note=f"{change_reps} PUTs, timed from sending the PUT "
                    f"(PUT itself {fmt(statistics.median(puts))} ms); "
                    f"poll {fmt(poller.granularity_ms)} ms",
                )
            )

            # start → 100 resources registered
            names = [f"example.com/r{r:03d}" for r in range(100)]
            _put(api, "hundred", resources_config(100, 2))
            times = []
            for _ in range(start_reps):
                process = spookd("hundred")
                started = time.monotonic()
                process.start()
                try:
                    times.append((poller.until(all_served(names, 2), timeout=60) - started) * 1000)
                finally:
                    process.stop()
                wait_until(lambda: not node.resources().registered, 30, "endpoints stopped", 0.02)
            figures.append(
                Figure(
                    name="start → registered, 100 resources (ConfigMap)",
                    unit="ms",
                    values=times,
                    target=Target(2000, "≤ 2000 ms"),
                    note=f"{start_reps} starts; includes interpreter start and kubernetes-asyncio import",
                )
            )

            # memory idle, 10 resources, above the kubernetes-asyncio floor
            _put(api, "ten", resources_config(10, 2))
            process = spookd("ten").start()
            try:
                poller.until(all_served(names[:10], 2), timeout=60)
                time.sleep(2.0)
                idle = []
                for _ in range(5):
                    idle.append(process.rss_kib() / 1024)
                    time.sleep(0.2)
            finally:
                process.stop()
            floor = statistics.median(floor_mib())
            figures.append(
                Figure(
                    name="RSS idle, 10 resources (ConfigMap) above the floor",
                    unit="MiB",
                    values=[v - floor for v in idle],
                    target=Target(8, "≤ 8 MiB"),
                    note=f"RSS {fmt(statistics.median(idle))} MiB; floor `import kubernetes_asyncio.client` "
                    f"{fmt(floor)} MiB",
                )
            )
    finally:
        shutil.rmtree(plugin_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return figures


if __name__ == "__main__":  # pragma: no cover - manual runs
    for f in measure(6, 2):
        print(f.name, fmt(f.median), f.spread, f.verdict, f.note)
