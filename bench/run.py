"""Run every benchmark, print the table and write docs/benchmarks.md.

python bench/run.py            # full run, about 12 minutes on two cores
python bench/run.py --quick    # fewer repetitions, about 4 minutes
python bench/run.py --only allocate,parse --no-write
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report
from bench.common import ROOT, Figure

GROUPS = ("allocate", "change", "startup", "restart", "memory", "parse", "configmap")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer repetitions (a smoke run, not for the record)"
    )
    parser.add_argument(
        "--only", default=",".join(GROUPS), help=f"comma-separated subset of {','.join(GROUPS)}"
    )
    parser.add_argument(
        "--reloads", type=int, help="config reloads for the memory figure (default 10000, quick 1000)"
    )
    parser.add_argument("--no-profile", action="store_true", help="do not profile the figures that miss")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument(
        "--wait-quiet", type=float, default=0.0, metavar="SECONDS",
        help="before each stage, wait up to this long for the 1-minute load average "
        "to fall below --quiet-load",
    )  # fmt: skip
    parser.add_argument("--quiet-load", type=float, default=1.0, help="see --wait-quiet (default 1.0)")
    args = parser.parse_args(argv)
    only = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = set(only) - set(GROUPS)
    if unknown:
        parser.error(f"unknown groups: {', '.join(sorted(unknown))}; choose from {', '.join(GROUPS)}")
    quick = args.quick
    started = time.monotonic()
    figures: list[Figure] = []
    sections: list[tuple[str, str]] = []
    timings: dict[str, float] = {}

    loads: list[tuple[str, str]] = []

    def stage(name: str) -> None:
        waited = report.wait_quiet(args.wait_quiet, args.quiet_load) if args.wait_quiet else 0.0
        timings[name] = time.monotonic()
        loads.append(
            (name, report.loadavg() + (f" (waited {waited:.0f} s for quiet)" if waited >= 1 else ""))
        )
        print(
            f"== {name} ({time.monotonic() - started:.0f} s so far; load {loads[-1][1]})",
            file=sys.stderr,
            flush=True,
        )

    if "allocate" in only:
        from bench import allocate

        stage("allocate")
        found, _rows = allocate.measure(
            calls=500 if quick else 2000, rounds=3 if quick else 5, warmup=100 if quick else 200
        )
        figures += found
    if "change" in only:
        from bench import node

        stage("change")
        figures.append(node.config_change_file(10 if quick else 40))
    if "configmap" in only:
        from bench import configmap

        stage("configmap")
        figures += configmap.measure(change_reps=8 if quick else 30, start_reps=2 if quick else 5)
    if "startup" in only:
        from bench import node

        stage("startup")
        figures += node.startup_file((1, 10, 100), 2 if quick else 5)
    if "restart" in only:
        from bench import node

        stage("restart")
        figures.append(node.kubelet_restart(2 if quick else 5, go_timeout=12.0))
    if "parse" in only:
        from bench import parse

        stage("parse")
        sizes = {1_000: 5, 10_000: 2, 100_000: 1} if quick else {1_000: 10, 10_000: 5, 100_000: 2}
        figures += parse.measure(sizes, lag_reps=2 if quick else 5)
    if "memory" in only:
        from bench import node

        stage("memory")
        reloads = args.reloads or (1000 if quick else 10_000)
        figures += node.memory_file(reloads, samples_every=max(1, reloads // 20))

    if not args.no_profile:
        stage("profiles")
        sections = report.profile_misses(figures, quick=quick)

    loads.append(("end", report.loadavg()))
    elapsed = time.monotonic() - started
    print(report.table(figures, markdown=False))
    if not args.no_write:
        text = report.markdown(
            figures, sections, elapsed=elapsed, quick=quick, argv=sys.argv[1:], loads=loads
        )
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(f"wrote {args.output} ({elapsed:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
