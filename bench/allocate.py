# ruff: noqa: RUF001, RUF003  (typographic – and × belong in the report)
"""Allocate latency over the Unix socket: Spookd and the Go reference, one Go client, alternately."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

from support.gobuild import build
from support.nodeharness import GoPlugin, NodeHarness

from bench.common import WIDGET, Figure, Spookd, Target, config_yaml, short_dir, write_atomic

DEVICES = 64
SIZES = (1, 8, 64)
GO_RESOURCE = "example.com/gowidget"
SPOOKD_SOCKET = "spookd-examplecom_widget.sock"


def measure(
    *, calls: int, rounds: int, warmup: int, profile: Path | None = None
) -> tuple[list[Figure], list[dict[str, Any]]]:
    """Both plugins registered with the real device manager; allocbench alternates between them."""
    plugin_dir = short_dir("bal-")
    workdir = short_dir("bal-w-")
    rows: list[dict[str, Any]] = []
    cpu: dict[int, tuple[float, float]] = {}
    try:
        with NodeHarness(log_dir=workdir) as node:
            node.start(plugin_dir)
            spookd = Spookd(workdir, plugin_dir, profile=profile)
            write_atomic(spookd.config, config_yaml([(WIDGET, f"dev-{i}") for i in range(DEVICES)]))
            spookd.start()
            try:
                go = GoPlugin(plugin_dir, GO_RESOURCE, DEVICES, log_dir=workdir).start()
                try:
                    node.wait_for(
                        lambda r: (
                            r.is_registered(WIDGET)
                            and r.capacity(WIDGET) == DEVICES
                            and r.is_registered(GO_RESOURCE)
                            and r.capacity(GO_RESOURCE) == DEVICES
                        ),
                        timeout=30,
                    )
                    assert go.proc is not None
                    for size in SIZES:
                        argv = [
                            str(build("allocbench")),
                            f"-target=spookd={plugin_dir / SPOOKD_SOCKET}",
                            f"-target=go={go.socket_path}",
                            "-id-prefix=dev-",
                            f"-sizes={size}",
                            f"-calls={calls}",
                            f"-rounds={rounds}",
                            f"-warmup={warmup}",
                        ]
                        before = cpu_ns(spookd.pid), cpu_ns(go.proc.pid)
                        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1800)
                        after = cpu_ns(spookd.pid), cpu_ns(go.proc.pid)
                        if done.returncode != 0:
                            raise RuntimeError(f"allocbench failed: {done.stderr}\n{spookd.log_tail()}")
                        # every call of the run: warm-up and rounds, each target alike
                        per_target = warmup + calls * rounds
                        cpu[size] = (
                            (after[0] - before[0]) / per_target / 1000,
                            (after[1] - before[1]) / per_target / 1000,
                        )
                        for line in done.stdout.splitlines():
                            row = json.loads(line)
                            if not row.get("done"):
                                rows.append(row)
                finally:
                    go.stop()
            finally:
                spookd.stop()
    finally:
        shutil.rmtree(plugin_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return figures(rows, calls) + cpu_figures(cpu, calls, rounds, warmup), rows


def cpu_ns(pid: int) -> int:
    """CPU time of a process so far, summed over its threads (ns)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def cpu_figures(cpu: dict[int, tuple[float, float]], calls: int, rounds: int, warmup: int) -> list[Figure]:
    """Server CPU per Allocate call: steadier than latency on a loaded machine (no waiting counted)."""
    return [
        Figure(
            name=f"Allocate server CPU per call, {size} device{'s' if size > 1 else ''}",
            unit="µs",
            values=[mine],
            reference=[ref],
            note=f"CPU of the whole plugin process over {warmup + calls * rounds} calls "
            f"(schedstat, all threads); Go {ref:.0f} µs",
        )
        for size, (mine, ref) in sorted(cpu.items())
    ]


#: Allocate p50 against the Go reference: issue #16 asks ≤ 1.5× for one device and
#: ≤ 2× for 64; SPEC §9's ≤ 3× stays for the sizes the issue does not name.
P50_RATIO_LIMITS = {1: 1.5, 64: 2.0}


def figures(rows: list[dict[str, Any]], calls: int) -> list[Figure]:
    out = []
    for size in SIZES:
        for pct, limit in (("p50", 0.5), ("p99", 1.0)):
            mine = [
                float(r[f"{pct}_us"]) / 1000 for r in rows if r["target"] == "spookd" and r["size"] == size
            ]
            ref = [float(r[f"{pct}_us"]) / 1000 for r in rows if r["target"] == "go" and r["size"] == size]
            errors = sum(int(r["errors"]) for r in rows if r["size"] == size)
            out.append(
                Figure(
                    name=f"Allocate {pct}, {size} device{'s' if size > 1 else ''}",
                    unit="ms",
                    values=mine,
                    reference=ref,
                    target=Target(limit, f"≤ {limit:g} ms"),
                    ratio_limit=P50_RATIO_LIMITS.get(size, 3.0) if pct == "p50" else None,
                    note=f"{len(mine)} rounds × {calls} calls"
                    + (f"; {errors} errors" if errors else "")
                    + f"; Go median {statistics.median(ref):.3f} ms",
                )
            )
    return out
