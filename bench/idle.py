# ruff: noqa: RUF001, RUF002, RUF003  (typographic – and × belong in the report)
"""Idle cost: CPU and wake-ups of Spookd serving 10 resources, beside 10 of the kubelet's Go stub plugins.

Each side is counted over all its threads from ``/proc``: CPU time from ``/proc/PID/task/*/schedstat``
(nanoseconds on the CPU), wake-ups as the voluntary + involuntary context switches of
``/proc/PID/task/*/status``. Spookd and the ten Go stubs are registered with the kubelet's real device
manager, which holds one ListAndWatch stream open per resource, and are measured over the same window.
"""

from __future__ import annotations

import shutil
import socket
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from support.apiserver import ApiServer
from support.nodeharness import GoPlugin, NodeHarness

from bench.common import Figure, Spookd, Target, fmt, resources_config, rss_kib, short_dir, write_atomic
from bench.configmap import NAMESPACE, _put, floor_mib
from bench.node import Poller, all_served

RESOURCES = 10
DEVICES = 2
#: How long every process is left alone after registration before the window opens.
SETTLE = 3.0
CPU_TARGET = 0.05  # % of a core
WAKEUP_TARGET = 5.0  # per second


@dataclass(frozen=True)
class Counters:
    """CPU nanoseconds and context switches of a set of processes, summed over their threads."""

    cpu_ns: int
    switches: int
    threads: int
    at: float

    @classmethod
    def read(cls, pids: list[int]) -> Counters:
        cpu = switches = threads = 0
        for pid in pids:
            for task in Path(f"/proc/{pid}/task").iterdir():
                try:
                    cpu += int((task / "schedstat").read_text().split()[0])
                    for line in (task / "status").read_text().splitlines():
                        if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                            switches += int(line.split()[1])
                except (FileNotFoundError, ProcessLookupError):
                    continue  # a thread that ended between the listing and the read
                threads += 1
        return cls(cpu, switches, threads, time.monotonic())


@dataclass(frozen=True)
class Idle:
    """What one side cost over one window."""

    cpu_pct: float
    wakeups: float
    threads: int

    @classmethod
    def between(cls, before: Counters, after: Counters) -> Idle:
        seconds = after.at - before.at
        return cls(
            cpu_pct=(after.cpu_ns - before.cpu_ns) / 1e9 / seconds * 100,
            wakeups=(after.switches - before.switches) / seconds,
            threads=after.threads,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(seconds: float = 60.0, windows: int = 1, *, configmap: bool = True) -> list[Figure]:
    """Idle figures for each variant (file/ConfigMap source × HTTP endpoint off/on)."""
    variants = [("file", False), ("file", True)]
    if configmap:
        variants += [("ConfigMap", False), ("ConfigMap", True)]
    figures: list[Figure] = []
    workdir, plugin_dir = short_dir("bid-w-"), short_dir("bid-")
    names = [f"example.com/r{r:03d}" for r in range(RESOURCES)]
    go_names = [f"example.com/go{r:03d}" for r in range(RESOURCES)]
    try:
        with NodeHarness(log_dir=workdir) as node:
            node.start(plugin_dir)
            poller = Poller(node)
            gos = [
                GoPlugin(plugin_dir, name, DEVICES, socket=f"go{r:03d}.sock", log_dir=workdir).start()
                for r, name in enumerate(go_names)
            ]
            go_pids = [g.proc.pid for g in gos if g.proc is not None]
            server = None
            try:
                if configmap:
                    server = ApiServer.start(workdir / "apiserver")
                    api = server.client()
                    api.ensure({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
                    _put(api, "idle", resources_config(RESOURCES, DEVICES))
                for source, http in variants:
                    on_api = source == "ConfigMap"
                    spookd = Spookd(
                        workdir,
                        plugin_dir,
                        configmap=f"{NAMESPACE}/idle" if on_api else None,
                        kubeconfig=server.kubeconfig if server is not None and on_api else None,
                        http_addr=f"127.0.0.1:{_free_port()}" if http else "",
                    )
                    write_atomic(spookd.config, resources_config(RESOURCES, DEVICES))
                    spookd.start()
                    try:
                        poller.until(all_served([*names, *go_names], DEVICES), timeout=60)
                        time.sleep(SETTLE)
                        mine: list[Idle] = []
                        ref: list[Idle] = []
                        rss: list[float] = []
                        for _ in range(windows):
                            before, go_before = Counters.read([spookd.pid]), Counters.read(go_pids)
                            time.sleep(seconds)
                            after, go_after = Counters.read([spookd.pid]), Counters.read(go_pids)
                            mine.append(Idle.between(before, after))
                            ref.append(Idle.between(go_before, go_after))
                            rss.append(spookd.rss_kib() / 1024)
                        go_rss = [rss_kib(pid) / 1024 for pid in go_pids]
                        if not spookd.alive():
                            raise RuntimeError(f"spookd died while idle:\n{spookd.log_tail()}")
                    finally:
                        spookd.stop()
                    label = f"{source} source, HTTP {'on' if http else 'off'}"
                    common = (
                        f"{windows} × {seconds:.0f} s; Spookd {mine[-1].threads} threads, "
                        f"the {RESOURCES} Go stubs {ref[-1].threads} threads in all"
                    )
                    figures.append(
                        Figure(
                            name=f"idle CPU, {RESOURCES} resources ({label})",
                            unit="% core",
                            values=[m.cpu_pct for m in mine],
                            reference=[r.cpu_pct for r in ref],
                            target=Target(CPU_TARGET, f"≤ {CPU_TARGET} %"),
                            note=f"{common}; Go: {fmt(statistics.median(r.cpu_pct for r in ref))} % "
                            f"for all {RESOURCES}",
                        )
                    )
                    figures.append(
                        Figure(
                            name=f"idle wake-ups, {RESOURCES} resources ({label})",
                            unit="/s",
                            values=[m.wakeups for m in mine],
                            reference=[r.wakeups for r in ref],
                            target=Target(WAKEUP_TARGET, f"≤ {WAKEUP_TARGET:g} /s"),
                            note=f"{common}; context switches, voluntary + involuntary; Go: "
                            f"{fmt(statistics.median(r.wakeups for r in ref))} /s for all {RESOURCES}",
                        )
                    )
                    rss_note = (
                        f"VmRSS at the end of the window; each Go stub {fmt(statistics.median(go_rss))} MiB"
                    )
                    if on_api:
                        floor = statistics.median(floor_mib())
                        figures.append(
                            Figure(
                                name=f"RSS idle, {RESOURCES} resources ({label}) above the floor",
                                unit="MiB",
                                values=[r - floor for r in rss],
                                target=Target(8, "≤ 8 MiB"),
                                note=f"{rss_note}; RSS {fmt(statistics.median(rss))} MiB, floor "
                                f"`import kubernetes_asyncio.client` {fmt(floor)} MiB",
                            )
                        )
                    else:
                        figures.append(
                            Figure(
                                name=f"RSS idle, {RESOURCES} resources ({label})",
                                unit="MiB",
                                values=rss,
                                target=Target(40, "≤ 40 MiB ²"),
                                note=rss_note,
                            )
                        )
                    time.sleep(1.0)
            finally:
                for g in gos:
                    g.stop()
                if server is not None:
                    server.close()
    finally:
        shutil.rmtree(plugin_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return figures


if __name__ == "__main__":  # pragma: no cover - manual runs
    import sys

    for f in measure(float(sys.argv[1]) if len(sys.argv) > 1 else 20.0):
        print(f.name, fmt(f.median), f.verdict, f.note)
