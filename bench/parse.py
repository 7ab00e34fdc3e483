"""Parse + validate of large configs, and the event-loop lag while a parse runs off the loop.

Spookd's parse (`spookd.sources.parsing`: the fast path, falling back to the
ruamel.yaml reference) is measured beside the reference alone, the figure before
the fast path; the fast parser's own share and stall are measured apart.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

import anyio

from bench.common import Figure, Target, config_yaml, fmt

SOURCE = "/etc/spookd/config.yaml"
TICK = 0.001
#: SPEC §9: parse + validate a 1 MiB configuration in at most 100 ms, stalling the loop at most 5 ms.
PARSE_LIMIT = 100.0
LAG_LIMIT = 5.0


def big_config(devices: int, resources: int = 10) -> bytes:
    """``devices`` devices spread over ``resources`` resources, block style, two env keys each."""
    pairs = [(f"example.com/r{i % resources:03d}", f"dev-{i:06d}") for i in range(devices)]
    return config_yaml(pairs).encode()


def _reference(data: bytes, source: str) -> object:
    """The parse before the fast path: ruamel.yaml and the validator, collector paused as Spookd does."""
    from spookd.config.load import load_reference
    from spookd.sources.parsing import _parse_settings

    with _parse_settings():
        return load_reference(data, source)


def _fast_parser_only(data: bytes, source: str) -> object:
    """The fast parser alone (yaml-rs), without the walk: its share of the parse."""
    import yaml_rs

    from spookd.sources.parsing import _parse_settings

    with _parse_settings():
        return yaml_rs.loads(data.decode())


def parse_times(
    data: bytes, reps: int, load: Callable[[bytes, str], object] | None = None, *, cpu: bool = False
) -> list[float]:
    """Milliseconds per parse of ``data`` as Spookd's sources run it (or by ``load``).

    ``cpu`` counts the parsing thread's CPU time instead of wall time: on a shared
    machine it is disturbed less by other work than the wall clock.
    """
    from spookd.sources.parsing import load_off_loop

    run = load or load_off_loop
    clock = time.thread_time if cpu else time.perf_counter
    times = []
    for _ in range(reps):
        started = clock()
        config = run(data, SOURCE)
        times.append((clock() - started) * 1000)
        del config
    return times


def loop_lag(
    data: bytes | None,
    duration: float = 0.0,
    load: Callable[[bytes, str], object] | None = None,
    *,
    drop: bool = False,
) -> tuple[float, float, int]:
    """Max and p99 lateness (ms) of a 1 ms ticker on Spookd's loop while a parse runs in a thread.

    The parse's result is kept until the ticker stops, as the daemon keeps the
    configuration it applies. With ``drop``, only the dropping of that result on the
    loop is timed (what replacing a configuration costs the loop), not the parse.
    """
    from spookd.sources.parsing import parse

    kept: list[object] = []

    async def in_thread(data: bytes) -> None:
        if load is None:
            kept.append(await parse(data, SOURCE))
        else:
            kept.append(await anyio.to_thread.run_sync(load, data, SOURCE))

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
                await in_thread(data)
            if drop:
                await anyio.sleep(0.01)
                lags.clear()
                kept.clear()
                await anyio.sleep(0.01)
            done.set()

    anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
    kept.clear()
    ordered = sorted(lags)
    return ordered[-1], ordered[int(0.99 * (len(ordered) - 1))], len(lags)


def profile_top(data: bytes, lines: int = 8) -> str:
    """The functions with the most own time in one parse as Spookd runs it (cProfile)."""
    from spookd.sources.parsing import load_off_loop

    profiler = cProfile.Profile()
    profiler.enable()
    load_off_loop(data, SOURCE)
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
            target=Target(PARSE_LIMIT, f"≤ {PARSE_LIMIT:g} ms") if devices == 10_000 else None,
            note=f"{reps} runs; {fmt(len(data) / devices)} bytes/device; "
            f"{fmt(devices / statistics.median(times))} devices/ms",
            extra={"bytes": len(data)},
        )
        out.append(figure)
    data = big_config(10_000)
    reps = sizes.get(10_000, 3)
    for name, load in (
        ("ruamel.yaml reference alone (before the fast path)", _reference),
        ("yaml-rs alone, without the walk", _fast_parser_only),
    ):
        times = parse_times(data, reps, load)
        out.append(
            Figure(
                name=f"parse 10000 devices: {name}",
                unit="ms",
                values=times,
                note=f"{reps} runs; for comparison, no target",
            )
        )
    for name, load in (("", None), (", ruamel.yaml reference alone (before)", _reference)):
        times = parse_times(data, reps, load, cpu=True)
        out.append(
            Figure(
                name=f"parse + validate 10000 devices, CPU time of the parsing thread{name}",
                unit="ms",
                values=times,
                target=Target(PARSE_LIMIT, f"≤ {PARSE_LIMIT:g} ms") if load is None else None,
                note=f"{reps} runs; time.thread_time, which other work on the machine disturbs less",
            )
        )
    base = [loop_lag(None, 0.3)[0] for _ in range(lag_reps)]
    for name, load in (
        ("", None),
        (", ruamel.yaml reference (before)", _reference),
        (", yaml-rs alone", _fast_parser_only),
    ):
        maxes, p99s = [], []
        for _ in range(lag_reps):
            worst, p99, _n = loop_lag(data, load=load)
            maxes.append(worst)
            p99s.append(p99)
        out.append(
            Figure(
                name=f"loop stall during a 10 000-device parse (max){name}",
                unit="ms",
                values=maxes,
                target=Target(LAG_LIMIT, f"≤ {LAG_LIMIT:g} ms") if load is None else None,
                note=f"1 ms ticker on uvloop, the parse in a worker thread "
                f"({'spookd.sources.parsing.parse' if load is None else load.__doc__.split(':')[0].strip()}); "
                f"p99 tick lateness {fmt(statistics.median(p99s))} ms; "
                f"idle loop max {fmt(statistics.median(base))} ms",
            )
        )
    dropped = [loop_lag(data, drop=True)[0] for _ in range(lag_reps)]
    out.append(
        Figure(
            name="loop stall dropping a parsed 10 000-device configuration (max)",
            unit="ms",
            values=dropped,
            note="1 ms ticker on uvloop; the configuration parsed as the sources do, then its last "
            "reference dropped on the loop, as a reload does with the configuration it replaces; no target",
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


def _candidate_parsers() -> dict[str, Callable[[bytes], object]]:
    """The fast YAML parsers on PyPI that were weighed (docs/design.md), those importable here."""
    found: dict[str, Callable[[bytes], object]] = {}
    try:
        import yaml_rs

        found["yaml-rs (yaml_rs.loads)"] = lambda data: yaml_rs.loads(data.decode())
    except ImportError:
        pass
    try:
        import ryml

        found["rapidyaml (ryml.parse_in_arena, tree only)"] = ryml.parse_in_arena
        found["rapidyaml tree + emit_json + msgspec.json.decode"] = lambda data: _ryml_json(ryml, data)
    except ImportError:
        pass
    try:
        import fast_yaml

        found["fastyaml-rs (fast_yaml.safe_load)"] = lambda data: fast_yaml.safe_load(data.decode())
    except ImportError:
        pass
    from spookd.config.yamlnodes import compose

    found["ruamel.yaml C composer (the reference's tree)"] = lambda data: compose(data.decode())
    return found


def _ryml_json(ryml: object, data: bytes) -> object:
    import msgspec

    tree = ryml.parse_in_arena(data)  # type: ignore[attr-defined]
    return msgspec.json.decode(ryml.emit_json_malloc(tree, tree.root_id()))  # type: ignore[attr-defined]


def _thread_stall(run: Callable[[], object]) -> float:
    """Worst lateness (ms) of a 1 ms sleep loop in this thread while ``run`` works in another."""
    import gc
    import threading

    lags: list[float] = []
    done = threading.Event()

    def work() -> None:
        run()
        done.set()

    gc.disable()
    try:
        worker = threading.Thread(target=work)
        worker.start()
        while not done.is_set():
            before = time.perf_counter()
            time.sleep(TICK)
            lags.append((time.perf_counter() - before - TICK) * 1000)
        worker.join()
    finally:
        gc.enable()
    return max(lags)


def candidates(reps: int = 5) -> str:
    """A table: each candidate parser's time and the stall it causes, on the 10 000-device config."""
    import gc

    data = big_config(10_000)
    rows = ["| parser | parse ms (median) | stall ms (median of each run's worst 1 ms-sleep lateness) |", "|---|---|---|"]
    parsers = _candidate_parsers()
    times: dict[str, list[float]] = {name: [] for name in parsers}
    stalls: dict[str, list[float]] = {name: [] for name in parsers}
    for run in parsers.values():
        run(data)
    for _ in range(reps):  # alternate, so load from other work falls on all alike
        for name, run in parsers.items():
            gc.disable()
            started = time.perf_counter()
            run(data)
            times[name].append((time.perf_counter() - started) * 1000)
            gc.enable()
            stalls[name].append(_thread_stall(lambda run=run: run(data)))
    for name in parsers:
        rows.append(f"| {name} | {fmt(statistics.median(times[name]))} | {fmt(statistics.median(stalls[name]))} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m bench.parse, from the repository root
    print(candidates())
