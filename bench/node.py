# ruff: noqa: RUF001, RUF003  (typographic – and × belong in the report)
"""Figures measured at the kubelet's real device manager: config change, start-up, kubelet restart, memory."""

from __future__ import annotations

import random
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from support.nodeharness import GoPlugin, NodeHarness, Resources

from bench.common import (
    WIDGET,
    Figure,
    Spookd,
    Target,
    config_yaml,
    fmt,
    resources_config,
    short_dir,
    wait_until,
    write_atomic,
)

#: Sleep between two polls of the device manager; the poll itself takes longer (see granularity).
POLL_SLEEP = 0.001


class Poller:
    """Polls the device manager as tightly as is fair on two cores, and remembers how tightly."""

    def __init__(self, node: NodeHarness) -> None:
        self.node = node
        self.periods: list[float] = []

    def until(self, predicate: Callable[[Resources], bool], timeout: float) -> float:
        """Monotonic time of the first snapshot for which ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while True:
            snap = self.node.resources()
            now = time.monotonic()
            self.periods.append(now - last)
            last = now
            if predicate(snap):
                return now
            if now > deadline:
                raise TimeoutError(f"device manager state not reached within {timeout}s: {snap.registered}")
            time.sleep(POLL_SLEEP)

    @property
    def granularity_ms(self) -> float:
        return statistics.median(self.periods) * 1000 if self.periods else 0.0


def all_served(names: list[str], capacity: int | dict[str, int]) -> Callable[[Resources], bool]:
    def check(r: Resources) -> bool:
        for name in names:
            want = capacity if isinstance(capacity, int) else capacity[name]
            if not r.is_registered(name) or r.capacity(name) != want:
                return False
        return True

    return check


def widgets(n: int) -> str:
    return config_yaml([(WIDGET, f"dev-{i}") for i in range(n)])


def config_change_file(reps: int, profile: Path | None = None) -> Figure:
    """Atomic rewrite of the config file → the device manager holds the new device list."""
    plugin_dir, workdir = short_dir("blw-"), short_dir("blw-w-")
    latencies: list[float] = []
    try:
        with NodeHarness(log_dir=workdir) as node:
            node.start(plugin_dir)
            spookd = Spookd(workdir, plugin_dir, profile=profile)
            write_atomic(spookd.config, widgets(8))
            spookd.start()
            poller = Poller(node)
            try:
                poller.until(all_served([WIDGET], 8), timeout=30)
                for i in range(reps):
                    n = 9 if i % 2 == 0 else 8
                    time.sleep(random.uniform(0.15, 0.3))
                    text = widgets(n)
                    started = time.monotonic()
                    write_atomic(spookd.config, text)
                    seen = poller.until(all_served([WIDGET], n), timeout=10)
                    latencies.append((seen - started) * 1000)
            finally:
                spookd.stop()
    finally:
        shutil.rmtree(plugin_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return Figure(
        name="config change → kubelet has it (file)",
        unit="ms",
        values=latencies,
        target=Target(100, "≤ 100 ms"),
        note=f"{reps} changes; polled every {fmt(poller.granularity_ms)} ms (median), "
        f"p90 {fmt(_p(latencies, 90))} ms",
    )


def _p(values: list[float], pct: float) -> float:
    from bench.common import percentile

    return percentile(values, pct)


def startup_file(counts: tuple[int, ...], reps: int) -> list[Figure]:
    """Process start → every resource registered with its capacity, file source."""
    out = []
    plugin_dir, workdir = short_dir("bst-"), short_dir("bst-w-")
    try:
        with NodeHarness(log_dir=workdir) as node:
            node.start(plugin_dir)
            poller = Poller(node)
            for count in counts:
                names = [f"example.com/r{r:03d}" for r in range(count)]
                times = []
                for _ in range(reps):
                    spookd = Spookd(workdir, plugin_dir)
                    write_atomic(spookd.config, resources_config(count, 2))
                    started = time.monotonic()
                    spookd.start()
                    try:
                        seen = poller.until(all_served(names, 2), timeout=60)
                        times.append((seen - started) * 1000)
                    finally:
                        spookd.stop()
                    wait_until(lambda: not node.resources().registered, 30, "endpoints stopped", 0.02)
                out.append(
                    Figure(
                        name=f"start → registered, {count} resource{'s' if count > 1 else ''} (file)",
                        unit="ms",
                        values=times,
                        target=Target(1000, "≤ 1000 ms") if count == 100 else None,
                        note=f"{reps} starts, 2 devices each; includes interpreter start; "
                        f"poll {fmt(poller.granularity_ms)} ms",
                    )
                )
    finally:
        shutil.rmtree(plugin_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def kubelet_restart(reps: int, resources: int = 10, go_timeout: float = 15.0) -> Figure:
    """Device manager restart (sockets wiped, new kubelet.sock) → re-registered with full capacity."""
    plugin_dir, workdir = short_dir("brs-"), short_dir("brs-w-")
    names = [f"example.com/r{r:03d}" for r in range(resources)]
    mine: list[float] = []
    ref: list[float] = []
    restart_ms: list[float] = []
    try:
        with NodeHarness(log_dir=workdir) as node:
            node.start(plugin_dir)
            spookd = Spookd(workdir, plugin_dir)
            write_atomic(spookd.config, resources_config(resources, 2))
            spookd.start()
            go = GoPlugin(plugin_dir, "example.com/gowidget", 2, log_dir=workdir).start()
            poller = Poller(node)
            try:
                poller.until(all_served([*names, "example.com/gowidget"], 2), timeout=30)
                for _ in range(reps):
                    time.sleep(0.3)
                    before = time.monotonic()
                    node.restart()
                    up = time.monotonic()
                    restart_ms.append((up - before) * 1000)
                    mine.append((poller.until(all_served(names, 2), timeout=30) - up) * 1000)
                    try:
                        seen = poller.until(all_served(["example.com/gowidget"], 2), timeout=go_timeout)
                        ref.append((seen - up) * 1000)
                    except TimeoutError:
                        ref.append(go_timeout * 1000)
            finally:
                go.stop()
                spookd.stop()
    finally:
        shutil.rmtree(plugin_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return Figure(
        name=f"kubelet restart → re-registered, {resources} resources",
        unit="ms",
        values=mine,
        reference=ref,
        target=Target(1000, "≤ 1000 ms"),
        note=f"{reps} restarts, from the new kubelet.sock "
        f"(the restart itself: {fmt(statistics.median(restart_ms))} ms); "
        "Go stub re-registers from its 10 s poll",
    )


def memory_file(reloads: int, samples_every: int, budget: float = 420.0) -> list[Figure]:
    """VmRSS idle with 10 resources, and its growth over ``reloads`` applied config changes.

    The reload run stops early after ``budget`` seconds (the figure names the count reached).
    """
    plugin_dir, workdir = short_dir("bme-"), short_dir("bme-w-")
    names = [f"example.com/r{r:03d}" for r in range(10)]
    config_a = resources_config(10, 2)
    # B drops r009 and gives r000 a third device: every reload stops or starts a server and updates one.
    config_b = config_yaml(
        [(f"example.com/r{r:03d}", f"dev-{d}") for r in range(9) for d in range(3 if r == 0 else 2)]
    )
    curve: list[tuple[int, int]] = []
    try:
        with NodeHarness(log_dir=workdir) as node:
            node.start(plugin_dir)
            spookd = Spookd(workdir, plugin_dir)
            write_atomic(spookd.config, config_a)
            spookd.start()
            try:
                Poller(node).until(all_served(names, 2), timeout=30)
                time.sleep(2.0)
                idle = []
                for _ in range(5):
                    idle.append(spookd.rss_kib() / 1024)
                    time.sleep(0.2)
                spookd.new_records()
                curve.append((0, spookd.rss_kib()))
                fds = [(0, spookd.open_fds())]
                refused_at = [(0, 0)]
                started = time.monotonic()
                timeouts = refusals = done = 0
                for i in range(1, reloads + 1):
                    write_atomic(spookd.config, config_b if i % 2 else config_a)
                    deadline = time.monotonic() + 10
                    while True:
                        records = spookd.new_records()
                        refusals += sum("already connected" in str(r.get("message", "")) for r in records)
                        if any(r.get("message") == "config applied" for r in records):
                            break
                        if time.monotonic() > deadline:
                            timeouts += 1
                            break
                        time.sleep(0.002)
                    done = i
                    if i % samples_every == 0:
                        curve.append((i, spookd.rss_kib()))
                        fds.append((i, spookd.open_fds()))
                        refused_at.append((i, refusals))
                    if not spookd.alive():
                        raise RuntimeError(f"spookd died after {i} reloads:\n{spookd.log_tail()}")
                    if time.monotonic() - started > budget and i % 2 == 0:
                        break
                elapsed = time.monotonic() - started
                if done % 2:
                    write_atomic(spookd.config, config_a)
                # A resource stopped and started again within the kubelet's stream teardown can be
                # refused for good ("device plugin already connected"): report it, do not wait forever.
                try:
                    Poller(node).until(all_served(names, 2), timeout=10)
                    stuck: list[str] = []
                except TimeoutError:
                    snap = node.resources()
                    stuck = [n for n in names if not (snap.is_registered(n) and snap.capacity(n) == 2)]
                refusals += sum(
                    "already connected" in str(r.get("message", "")) for r in spookd.new_records()
                )
                time.sleep(2.0)
                after = [spookd.rss_kib() / 1024]
            finally:
                spookd.stop()
    finally:
        shutil.rmtree(plugin_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    growth = after[0] - statistics.median(idle)
    first_k = next((kib for n, kib in curve if n >= done // 10 and n > 0), curve[-1][1]) / 1024
    late_growth = after[0] - first_k
    return [
        Figure(
            name="RSS idle, 10 resources (file)",
            unit="MiB",
            values=idle,
            target=Target(48, "≤ 48 MiB"),
            note="5 samples, 2 s after registration",
        ),
        Figure(
            name=f"RSS growth over {done} reloads (file)",
            unit="MiB",
            values=[growth],
            target=Target(2.0, "flat (≤ 2 MiB growth)"),
            note=f"{fmt(elapsed)} s, {fmt(elapsed / max(done, 1) * 1000)} ms per applied reload"
            + (f" (stopped at the {budget:.0f} s budget, {reloads} asked)" if done < reloads else "")
            + (f", {timeouts} not seen applied" if timeouts else "")
            + f"; growth after the first 10 %: {fmt(late_growth)} MiB"
            + (f'; kubelet refused re-registration {refusals}× ("already connected")' if refusals else "")
            + (f"; left unserved at the end: {', '.join(stuck)}" if stuck else ""),
            extra={
                "curve": curve,
                "fds": fds,
                "stuck": stuck,
                "refusals": refusals,
                "refused_at": refused_at,
            },
        ),
    ]
