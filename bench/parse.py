"""Parse + validate of large configs, and the event-loop lag while a parse runs off the loop."""

from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import time
from typing import NamedTuple

import anyio

from bench.common import Figure, Target, config_yaml, fmt

SOURCE = "/etc/spookd/config.yaml"
TICK = 0.001
#: Our reading of "off the event loop": no stall longer than 10 ms (2 switch intervals).
LAG_LIMIT = 10.0


def big_config(devices: int, resources: int = 10) -> bytes:
    """``devices`` devices spread over ``resources`` resources, block style, two env keys each."""
    pairs = [(f"example.com/r{i % resources:03d}", f"dev-{i:06d}") for i in range(devices)]
    return config_yaml(pairs).encode()


def parse_times(data: bytes, reps: int) -> list[float]:
    from spookd.config import load_config

    times = []
    for _ in range(reps):
        started = time.perf_counter()
        config = load_config(data, SOURCE)
        times.append((time.perf_counter() - started) * 1000)
        del config
    return times


def loop_lag(data: bytes | None, duration: float = 0.0) -> tuple[float, float, int]:
    """Max and p99 lateness (ms) of a 1 ms ticker on Spookd's loop while ``parse`` runs in a thread."""
    from spookd.sources.parsing import parse

    lags: list[float] = []

    async def main() -> None:
        done = anyio.Event()

        async def ticker() -> None:
            while not done.is_set():
                before = time.perf_counter()
                await anyio.sleep(TICK)
                lags.append((time.perf_counter() - before - TICK) * 1000)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await anyio.sleep(0.05)
            lags.clear()
            if data is None:
                await anyio.sleep(duration)
            else:
                await parse(data, SOURCE)
            done.set()

    anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
    ordered = sorted(lags)
    return ordered[-1], ordered[int(0.99 * (len(ordered) - 1))], len(lags)


def profile_top(data: bytes, lines: int = 8) -> str:
    """The functions with the most own time in one parse (cProfile)."""
    from spookd.config import load_config

    profiler = cProfile.Profile()
    profiler.enable()
    load_config(data, SOURCE)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime")
    stats.print_stats(lines)
    text = out.getvalue()
    start = text.find("   ncalls")
    return text[start:].rstrip() if start >= 0 else text.rstrip()


def measure(sizes: dict[int, int], lag_reps: int) -> list[Figure]:
    """``sizes`` maps device count → repetitions."""
    out = []
    for devices, reps in sizes.items():
        data = big_config(devices)
        parse_times(data, 1)  # warm caches and imports
        times = parse_times(data, reps)
        size_kib = len(data) / 1024
        size = f"{fmt(size_kib / 1024)} MiB" if size_kib >= 1024 else f"{fmt(size_kib)} KiB"
        figure = Figure(
            name=f"parse + validate {devices} devices ({size})",
            unit="ms",
            values=times,
            target=Target(150, "≤ 150 ms") if devices == 10_000 else None,
            note=f"{reps} runs; {fmt(len(data) / devices)} bytes/device; "
            f"{fmt(devices / statistics.median(times))} devices/ms",
            extra={"bytes": len(data)},
        )
        out.append(figure)
    data = big_config(10_000)
    base = [loop_lag(None, 0.3)[0] for _ in range(lag_reps)]
    maxes, p99s = [], []
    for _ in range(lag_reps):
        worst, p99, _n = loop_lag(data)
        maxes.append(worst)
        p99s.append(p99)
    out.append(
        Figure(
            name="loop stall during a 10 000-device parse (max)",
            unit="ms",
            values=maxes,
            target=Target(LAG_LIMIT, f"≤ {LAG_LIMIT:g} ms ¹"),
            note=f"1 ms ticker on uvloop, parse via spookd.sources.parsing.parse (worker thread); "
            f"p99 tick lateness {fmt(statistics.median(p99s))} ms; "
            f"idle loop max {fmt(statistics.median(base))} ms",
        )
    )
    return out


class GcEffect(NamedTuple):
    with_gc: float
    without_gc: float
    stall_with: float
    stall_without: float
    full_collections: int
    collections: int

    @property
    def gc_share(self) -> float:
        return max(0.0, 1 - self.without_gc / self.with_gc) if self.with_gc else 0.0

    @property
    def text(self) -> str:
        return (
            f"parse {fmt(self.with_gc)} ms as Spookd runs it, {fmt(self.without_gc)} ms with the collector "
            f"disabled around it; loop stall {fmt(self.stall_with)} ms → {fmt(self.stall_without)} ms; one "
            f"parse triggers {self.full_collections} full (gen 2) and {self.collections} collections in all"
        )


def gc_effect(devices: int = 10_000, reps: int = 3) -> GcEffect:
    """Parse time and loop stall with the cyclic GC off: how much of the miss the collector causes."""
    import gc

    data = big_config(devices)
    with_gc = statistics.median(parse_times(data, reps))
    stall_gc = loop_lag(data)[0]
    gc.disable()
    try:
        without = statistics.median(parse_times(data, reps))
        stall = loop_lag(data)[0]
    finally:
        gc.enable()
    seen: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(count)
    try:
        parse_times(data, 1)
    finally:
        gc.callbacks.remove(count)
    return GcEffect(with_gc, without, stall_gc, stall, seen.count(2), len(seen))
