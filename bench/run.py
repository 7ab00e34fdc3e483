"""Run every benchmark, print the table and write docs/benchmarks.md.

python bench/run.py            # full run, about 12 minutes on two cores
python bench/run.py --quick    # fewer repetitions, about 4 minutes
python bench/run.py --only allocate,parse --no-write
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report
from bench.common import ROOT, Figure

GROUPS = ("allocate", "change", "configmap", "startup", "restart", "parse", "memory", "apicost", "idle")


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
    parser.add_argument(
        "--results", type=Path, default=Path.home() / ".cache" / "spookd-bench" / "last.json",
        help="where the figures of the run are kept (for --merge)",
    )  # fmt: skip
    parser.add_argument(
        "--merge", action="store_true",
        help="keep the figures of the last run for the groups not measured now (with --only)",
    )  # fmt: skip
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

    failures: list[tuple[str, str]] = []

    def guarded(name: str, measure: Callable[[], list[Figure]]) -> None:
        """Run one group; a failure is reported on the page instead of ending the run."""
        if name not in only:
            return
        stage(name)
        try:
            found = measure()
            for figure in found:
                figure.group = name
            figures.extend(found)
        except Exception as exc:
            traceback.print_exc()
            failures.append((name, f"{type(exc).__name__}: {exc}"))

    def allocate_group() -> list[Figure]:
        from bench import allocate

        found, _rows = allocate.measure(
            calls=500 if quick else 2000, rounds=3 if quick else 5, warmup=100 if quick else 200
        )
        return found

    def change_group() -> list[Figure]:
        from bench import node

        return [node.config_change_file(10 if quick else 40)]

    def configmap_group() -> list[Figure]:
        from bench import configmap

        return configmap.measure(change_reps=8 if quick else 30, start_reps=2 if quick else 5)

    def startup_group() -> list[Figure]:
        from bench import node

        return node.startup_file((1, 10, 100), 2 if quick else 5)

    def restart_group() -> list[Figure]:
        from bench import node

        return [node.kubelet_restart(2 if quick else 5, go_timeout=12.0)]

    def parse_group() -> list[Figure]:
        from bench import parse

        sizes = {1_000: 5, 10_000: 2, 100_000: 1} if quick else {1_000: 10, 10_000: 5, 100_000: 2}
        return parse.measure(sizes, lag_reps=2 if quick else 5)

    def memory_group() -> list[Figure]:
        from bench import node

        reloads = args.reloads or (1000 if quick else 10_000)
        return node.memory_file(reloads, samples_every=max(1, reloads // 20))

    def apicost_group() -> list[Figure]:
        from bench import apicost

        return apicost.measure(
            nodes=20, idle_seconds=30 if quick else 90, churn_seconds=30 if quick else 90,
            baseline_seconds=20 if quick else 45,
        )  # fmt: skip

    def idle_group() -> list[Figure]:
        from bench import idle

        return idle.measure(seconds=20.0 if quick else 60.0)

    guarded("allocate", allocate_group)
    guarded("change", change_group)
    guarded("configmap", configmap_group)
    guarded("startup", startup_group)
    guarded("restart", restart_group)
    guarded("parse", parse_group)
    guarded("memory", memory_group)
    guarded("apicost", apicost_group)
    guarded("idle", idle_group)

    argv = sys.argv[1:]
    previous = 0.0
    measured = report.spookd_version() if figures else None
    measured_groups = {f.group for f in figures} | {name for name, _ in failures}
    kept_sections: list[tuple[str, str, str]] = []
    kept_findings = ""
    stored = None
    if args.merge and args.results.exists():
        stored = json.loads(args.results.read_text())
    elif args.merge and args.output.exists():
        # No results kept on this machine yet: read the figures back from the page itself.
        page = args.output.read_text()
        page_figures, page_sections, page_findings = report.figures_from_page(page)
        stored = {
            "figures": [f.to_json() for f in page_figures],
            "sections": page_sections,
            "findings": page_findings,
            "loads": report.loads_from_page(page),
            "argv": [f"(the other groups read back from the page: {report.provenance_from_page(page)})"],
            "elapsed": 0.0,
            "measured": None,
        }
    if stored is not None:
        kept = [Figure.from_json(raw) for raw in stored["figures"]]
        figures = [f for f in kept if f.group not in measured_groups] + figures
        order = {g: i for i, g in enumerate(GROUPS)}
        figures.sort(key=lambda f: order.get(f.group, len(GROUPS)))
        loads[:0] = [(n, v) for n, v in stored["loads"] if n not in measured_groups | {"profiles", "end"}]
        argv = [*stored["argv"], "+", *argv]
        previous = float(stored.get("elapsed", 0.0))
        kept_sections = [tuple(s) for s in stored.get("sections", []) if s[0] not in measured_groups]  # type: ignore[misc]
        if "memory" not in measured_groups:
            kept_findings = stored.get("findings", "")
        if not measured_groups:
            measured = stored.get("measured") or measured
    if not args.no_profile:
        stage("profiles")
        # Profile only what was measured now; the other groups keep the sections they had.
        sections = report.profile_misses([f for f in figures if f.group in measured_groups], quick=quick)
    all_sections = [*kept_sections, *((report.group_of_section(t), t, b) for t, b in sections)]
    all_sections.sort(key=lambda s: {g: i for i, g in enumerate(GROUPS)}.get(s[0], len(GROUPS)))
    sections = [(t, b) for _, t, b in all_sections]
    findings = report.findings(figures) or kept_findings

    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(
        json.dumps(
            {
                "figures": [f.to_json() for f in figures],
                "sections": all_sections,
                "findings": findings,
                "loads": loads,
                "argv": argv,
                "elapsed": previous + time.monotonic() - started,
                "measured": measured,
            },
            indent=1,
        )
    )

    loads.append(("end", report.loadavg()))
    elapsed = previous + time.monotonic() - started
    print(report.table(figures, markdown=False))
    if not args.no_write:
        text = report.markdown(
            figures,
            sections,
            elapsed=elapsed,
            quick=quick,
            argv=argv,
            loads=loads,
            failures=failures,
            measured=measured,
            kept_findings=findings,
        )
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(f"wrote {args.output} ({elapsed:.0f} s)", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
