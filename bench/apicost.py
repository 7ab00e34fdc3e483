"""API server cost of cross-host exclusivity: N Spookd processes, one real kube-apiserver.

Each simulated node is a real ``spookd run`` process (file source, ``exclusive: true``,
every node listed for every device). The kubelet side is a lighter stand-in than the
node harness: tests/kubelet_double.py (Registration, ListAndWatch, Allocate) plus a
PodResources ``List`` server fed by what the stand-in allocated, all N of them in one
event loop of this process. Requests are counted by the API server itself
(``apiserver_request_total``, WATCH apart), minus the API server's own background
requests measured before any Spookd starts; watch traffic from
``apiserver_watch_events_total`` and ``apiserver_watch_events_sizes``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import anyio
import grpclib.server
from kubelet_double import KubeletDouble
from support.apiserver import ApiClient, ApiServer

from bench.common import ROOT, Figure, Target, short_dir, wait_until
from spookd._proto import v1 as podresources

OSC = "skao.int/oscilloscope"
#: Nodes per lab in the lab topology.
LAB = 4
NAMESPACE = "bench-leases"
T = TypeVar("T")

_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+-]+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


class PodResourcesServer(podresources.PodResourcesListerBase):
    """The kubelet's PodResources List, answered from what the stand-in allocated."""

    def __init__(self) -> None:
        self.in_use: set[str] = set()

    async def list(
        self, message: podresources.ListPodResourcesRequest
    ) -> podresources.ListPodResourcesResponse:
        pods = [
            podresources.PodResources(
                name=f"pod-{device}",
                namespace="default",
                containers=[
                    podresources.ContainerResources(
                        name="app",
                        devices=[podresources.ContainerDevices(resource_name=OSC, device_ids=[device])],
                    )
                ],
            )
            for device in sorted(self.in_use)
        ]
        return podresources.ListPodResourcesResponse(pod_resources=pods)


class StandIns:
    """N kubelet stand-ins in one event loop thread."""

    def __init__(self, plugin_dirs: list[Path], sockets: list[Path]) -> None:
        self.plugin_dirs = plugin_dirs
        self.sockets = sockets
        self.kubelets: list[KubeletDouble] = []
        self.pod_resources = [PodResourcesServer() for _ in plugin_dirs]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the kubelet stand-ins did not start")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        servers = []
        async with anyio.create_task_group() as tg:
            for plugin_dir, socket, pod_resources in zip(
                self.plugin_dirs, self.sockets, self.pod_resources, strict=True
            ):
                kubelet = KubeletDouble(plugin_dir, tg)
                await kubelet.start()
                self.kubelets.append(kubelet)
                server = grpclib.server.Server([pod_resources])
                await server.start(path=str(socket))
                servers.append(server)
            self._ready.set()
            await self._stop.wait()
            for kubelet in self.kubelets:
                await kubelet.stop()
            for server in servers:
                server.close()
            tg.cancel_scope.cancel()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        assert self._loop is not None
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def health(self, node: int) -> dict[str, str]:
        view = self.kubelets[node].plugins.get(OSC)
        return dict(view.devices) if view is not None and view.streaming else {}

    def allocate(self, node: int, device: str) -> bool:
        """Allocate as the kubelet does; the device shows in PodResources only if Spookd said yes."""

        async def run() -> bool:
            try:
                await self.kubelets[node].allocate(OSC, [device])
            except grpclib.GRPCError:
                return False
            self.pod_resources[node].in_use.add(device)
            return True

        return self.call(run())

    def free(self, node: int, device: str) -> None:
        self.pod_resources[node].in_use.discard(device)

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=20)


def scrape(api: ApiClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every labelled sample of the API server's /metrics we use."""
    text = api.request("GET", "/metrics").text
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        if not line.startswith(
            ("apiserver_request_total{", "apiserver_response_sizes_sum{", "apiserver_watch_events_")
        ):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = tuple(sorted(_LABEL.findall(match["labels"])))
        samples[(match["name"], labels)] = float(match["value"])
    return samples


def delta(after: dict[Any, float], before: dict[Any, float]) -> dict[Any, float]:
    return {key: value - before.get(key, 0.0) for key, value in after.items() if value - before.get(key, 0.0)}


def requests_by_verb(samples: dict[Any, float], *, watches: bool) -> dict[str, float]:
    """apiserver_request_total summed per verb/resource (resource requests only)."""
    out: dict[str, float] = {}
    for (name, labels), value in samples.items():
        if name != "apiserver_request_total":
            continue
        labelled = dict(labels)
        if not labelled.get("resource"):
            continue  # /metrics, /healthz: the benchmark's own
        if (labelled.get("verb") == "WATCH") != watches:
            continue
        key = f"{labelled.get('verb')} {labelled['resource']}"
        out[key] = out.get(key, 0.0) + value
    return out


def watch_traffic(samples: dict[Any, float]) -> tuple[float, float]:
    """(Lease watch events sent, their bytes)."""
    events = size = 0.0
    for (name, labels), value in samples.items():
        labelled = dict(labels)
        if labelled.get("kind") != "Lease" and labelled.get("resource") != "leases":
            continue
        if name == "apiserver_watch_events_total":
            events += value
        elif name == "apiserver_watch_events_sizes_sum":
            size += value
    return events, size


def response_bytes(samples: dict[Any, float]) -> float:
    total = 0.0
    for (name, labels), value in samples.items():
        labelled = dict(labels)
        if name == "apiserver_response_sizes_sum" and labelled.get("resource") == "leases":
            total += value
    return total


def config(nodes: list[str], devices: int) -> str:
    lines = "".join(
        f'      - {{resourceName: {OSC}, instanceID: "{i:04d}", env: {{IP: 10.0.{i // 250}.{i % 250}}}}}\n'
        for i in range(devices)
    )
    return f"exclusive: true\ndeviceMapping:\n  - hosts: [{', '.join(nodes)}]\n    devices:\n{lines}"


class Window:
    """Requests the Spookd fleet made over one measured window, net of the API server's own."""

    def __init__(self, api: ApiClient, baseline: dict[str, float], baseline_seconds: float) -> None:
        self.api = api
        self.baseline = baseline
        self.baseline_seconds = baseline_seconds
        self.before = scrape(api)
        self.started = time.monotonic()

    def close(self) -> dict[str, Any]:
        samples = delta(scrape(self.api), self.before)
        seconds = time.monotonic() - self.started
        raw = requests_by_verb(samples, watches=False)
        net = {
            key: max(0.0, value - self.baseline.get(key, 0.0) * seconds / self.baseline_seconds)
            for key, value in raw.items()
        }
        events, event_bytes = watch_traffic(samples)
        return {
            "seconds": seconds,
            "requests": {k: round(v, 1) for k, v in sorted(net.items()) if v >= 0.5},
            "total": sum(net.values()),
            "watches": sum(requests_by_verb(samples, watches=True).values()),
            "watch_events": events,
            "watch_bytes": event_bytes,
            "response_bytes": response_bytes(samples),
        }


def per_node_minute(window: dict[str, Any], nodes: int) -> float:
    return float(window["total"]) / nodes / (float(window["seconds"]) / 60)


def projection(
    window: dict[str, Any], holders: int, target_nodes: int, target_holders: int, fan_out: int
) -> str:
    """Requests/s and bytes/s at ``target_nodes`` with ``target_holders`` devices held.

    Requests scale with the holders. Every Lease write is sent to every watch that
    selects it: ``fan_out`` watchers per write at the target (all nodes when every
    node shares every device; the lab size when devices are shared within labs).
    """
    seconds = float(window["seconds"])
    writes = float(window["total"])
    per_holder = writes / max(1, holders) / seconds
    request_rate = per_holder * target_holders
    per_event = float(window["watch_bytes"]) / max(1.0, float(window["watch_events"]))
    # A write carries the Lease in its body and in its answer: about twice the object.
    request_bytes = request_rate * 2 * per_event
    watch_rate = request_rate * fan_out
    return (
        f"{target_nodes} nodes, {target_holders} held: {request_rate:.1f} req/s "
        f"(~{_bytes(request_bytes)}/s of bodies), watch {watch_rate:,.0f} events/s "
        f"({_bytes(watch_rate * per_event)}/s)"
    )


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{value:.0f} B"
        value /= 1024
    return f"{value:.1f} GiB"


def lab_config(nodes: list[str], lab: int) -> str:
    """Devices shared within labs of ``lab`` nodes: node i may hold devices of its own lab only."""
    mappings = []
    for start in range(0, len(nodes), lab):
        hosts = ", ".join(nodes[start : start + lab])
        devices = "".join(
            f'      - {{resourceName: {OSC}, instanceID: "{i:04d}", env: {{IP: 10.1.0.{i}}}}}\n'
            for i in range(start, min(start + lab, len(nodes)))
        )
        mappings.append(f"  - hosts: [{hosts}]\n    devices:\n{devices}")
    return "exclusive: true\ndeviceMapping:\n" + "".join(mappings)


def measure(
    nodes: int = 20, idle_seconds: float = 90, churn_seconds: float = 90, baseline_seconds: float = 45
) -> list[Figure]:
    workroot = short_dir("bac-")
    apiserver = ApiServer.start(workroot / "apiserver")
    api = apiserver.client()
    names = [f"node-{i:02d}" for i in range(nodes)]
    workdirs = [short_dir(f"ba{i}-") for i in range(nodes)]
    plugin_dirs = [w / "p" for w in workdirs]
    for d in plugin_dirs:
        d.mkdir()
    sockets = [w / "podres.sock" for w in workdirs]
    processes: list[subprocess.Popen[bytes]] = []
    stand_ins: StandIns | None = None
    lease_duration = float(os.environ.get("SPOOKD_LEASE_DURATION", "15"))
    try:
        api.ensure({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        # The API server's own background requests (its identity Lease, controllers).
        time.sleep(5)
        before = scrape(api)
        time.sleep(baseline_seconds)
        baseline = requests_by_verb(delta(scrape(api), before), watches=False)

        stand_ins = StandIns(plugin_dirs, sockets)
        text = config(names, nodes)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "KUBECONFIG": str(apiserver.kubeconfig)}
        for name, workdir, plugin_dir, socket in zip(names, workdirs, plugin_dirs, sockets, strict=True):
            (workdir / "c").mkdir()
            (workdir / "c" / "config.yaml").write_text(text)
            argv = [
                sys.executable, "-m", "spookd", "run", "--config", str(workdir / "c" / "config.yaml"),
                "--node-name", name, "--plugin-dir", str(plugin_dir), "--http-addr", "",
                "--log-format", "json", "--lease-namespace", NAMESPACE, "--pod-resources-socket", str(socket),
            ]  # fmt: skip
            with (workdir / "spookd.log").open("ab") as log:
                processes.append(
                    subprocess.Popen(
                        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=ROOT
                    )
                )
        wait_until(
            lambda: all(len(stand_ins.health(i)) == nodes for i in range(nodes)),
            timeout=120,
            what="fleet serving",
        )
        time.sleep(3)  # first LISTs done

        # Idle, one device held in the whole fleet.
        assert stand_ins.allocate(0, "0000"), "node-00 was refused a free device"
        wait_until(
            lambda: all(stand_ins.health(i).get("0000") == "Unhealthy" for i in range(1, nodes)),
            timeout=10,
            what="claim seen everywhere",
        )
        window = Window(api, baseline, baseline_seconds)
        time.sleep(idle_seconds)
        idle_one = window.close()

        # Idle, every node holding one device.
        for i in range(1, nodes):
            assert stand_ins.allocate(i, f"{i:04d}"), f"{names[i]} was refused a free device"
        time.sleep(3)
        window = Window(api, baseline, baseline_seconds)
        time.sleep(idle_seconds)
        idle_all = window.close()

        for i in range(nodes):
            stand_ins.free(i, f"{i:04d}")
        wait_until(
            lambda: all(v == "Healthy" for i in range(nodes) for v in stand_ins.health(i).values()),
            timeout=60,
            what="every claim released",
        )

        # Churn: every node takes a random free device, keeps it 2-6 s, frees it, waits 1-4 s.
        rng = random.Random(14)
        window = Window(api, baseline, baseline_seconds)
        holding: dict[int, tuple[str, float]] = {}
        next_try = {i: time.monotonic() + rng.uniform(0, 3) for i in range(nodes)}
        taken = refused = 0
        end = time.monotonic() + churn_seconds
        while time.monotonic() < end:
            now = time.monotonic()
            for i in range(nodes):
                if i in holding and holding[i][1] <= now:
                    stand_ins.free(i, holding.pop(i)[0])
                    next_try[i] = now + rng.uniform(1, 4)
                elif i not in holding and next_try[i] <= now:
                    free = sorted(d for d, h in stand_ins.health(i).items() if h == "Healthy")
                    device = rng.choice(free) if free else ""
                    if device and stand_ins.allocate(i, device):
                        taken += 1
                        holding[i] = (device, now + rng.uniform(2, 6))
                    else:
                        refused += 1
                        next_try[i] = now + rng.uniform(1, 4)
            time.sleep(0.05)
        churn = window.close()
        churn["claims"] = taken
        churn["refused"] = refused
        for i, (device, _) in list(holding.items()):
            stand_ins.free(i, device)

        # Idle in labs: devices shared by groups of LAB nodes, every node holding one.
        wait_until(
            lambda: all(v == "Healthy" for i in range(nodes) for v in stand_ins.health(i).values()),
            timeout=60,
            what="every churn claim released",
        )
        text = lab_config(names, LAB)
        for workdir in workdirs:
            tmp = workdir / "c" / "config.tmp"
            tmp.write_text(text)
            tmp.replace(workdir / "c" / "config.yaml")
        wait_until(
            lambda: all(len(stand_ins.health(i)) == min(LAB, nodes - i // LAB * LAB) for i in range(nodes)),
            timeout=60,
            what="lab configuration served",
        )
        time.sleep(3)
        for i in range(nodes):
            assert stand_ins.allocate(i, f"{i:04d}"), f"{names[i]} was refused its lab's free device"
        time.sleep(3)
        window = Window(api, baseline, baseline_seconds)
        time.sleep(idle_seconds)
        idle_labs = window.close()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        if stand_ins is not None:
            stand_ins.close()
        apiserver.close()
        for path in [workroot, *workdirs]:
            shutil.rmtree(path, ignore_errors=True)

    def projections(
        window: dict[str, Any], holders: int, held: Callable[[int], int], fan_out: Callable[[int], float]
    ) -> list[str]:
        return [projection(window, holders, n, held(n), fan_out(n)) for n in (1000, 5000)]

    def note(
        window: dict[str, Any], holders: int, held: Callable[[int], int], fan_out: Callable[[int], float]
    ) -> str:
        return (
            f"{nodes} Spookd processes, kubelet stand-in (tests/kubelet_double.py "
            "and a PodResources List server), "
            f"Lease {lease_duration:g} s, {window['seconds']:.0f} s window; requests by verb "
            f"{json.dumps(window['requests'])}; {window['watches']:.0f} WATCH requests "
            f"({window['watch_events']:.0f} Lease watch events, {_bytes(window['watch_bytes'])}); "
            "projection: "
            + "; ".join(projection(window, holders, n, held(n), fan_out(n)) for n in (1000, 5000))
        )

    target = Target(6.0, "≤ 6 req/node/min")
    # Watchers per Lease write when devices are shared within labs: does not grow with the fleet.
    measured_fan_out = float(idle_labs["watch_events"]) / max(1.0, float(idle_labs["total"]))
    figures = [
        Figure(
            f"API requests per node per minute, idle, 1 device held among {nodes} nodes",
            "req/node/min",
            [per_node_minute(idle_one, nodes)],
            target=target,
            note=note(idle_one, 1, lambda n: 1, lambda n: n),
            extra={"window": idle_one, "projections": projections(idle_one, 1, lambda n: 1, lambda n: n)},
        ),
        Figure(
            f"API requests per node per minute, idle, every node holding 1 device ({nodes} nodes)",
            "req/node/min",
            [per_node_minute(idle_all, nodes)],
            target=target,
            note=note(idle_all, nodes, lambda n: n, lambda n: n),
            extra={"window": idle_all, "projections": projections(idle_all, nodes, lambda n: n, lambda n: n)},
        ),
        Figure(
            f"API requests per node per minute, churn ({nodes} nodes)",
            "req/node/min",
            [per_node_minute(churn, nodes)],
            note=note(churn, nodes, lambda n: n, lambda n: n)
            + f"; {churn['claims']} claims taken, {churn['refused']} tries refused or without a free device",
            extra={"window": churn, "projections": projections(churn, nodes, lambda n: n, lambda n: n)},
        ),
        Figure(
            f"API requests per node per minute, idle, labs of {LAB} sharing, every node holding 1 device",
            "req/node/min",
            [per_node_minute(idle_labs, nodes)],
            target=target,
            note=note(idle_labs, nodes, lambda n: n, lambda n: measured_fan_out),
            extra={
                "window": idle_labs,
                "projections": projections(idle_labs, nodes, lambda n: n, lambda n: measured_fan_out),
            },
        ),
    ]
    return figures
