# ruff: noqa: RUF001, RUF003  (typographic – and × belong in the report)
"""The results table, the machine description, profiles of the misses, and docs/benchmarks.md."""

from __future__ import annotations

import itertools
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from bench.common import ROOT, Figure, fmt

PACKAGES = ("grpclib", "betterproto2", "h2", "uvloop", "anyio", "ruamel.yaml", "ruamel.yaml.clib", "msgspec",
            "watchfiles", "loguru", "kubernetes_asyncio", "protobuf")  # fmt: skip


def loadavg() -> str:
    """The 1-, 5- and 15-minute load averages."""
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "unknown"


def wait_quiet(timeout: float, threshold: float) -> float:
    """Wait up to ``timeout`` s for the 1-minute load average to fall below ``threshold``; seconds waited."""
    import time

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if float(loadavg().split()[0]) < threshold:
                break
        except ValueError:
            break
        time.sleep(5)
    return time.monotonic() - started


def spookd_version() -> str:
    """The commit Spookd is measured at, and whether spookd/ had uncommitted changes."""
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--", "spookd")
    return f"commit {commit}" + (" with uncommitted changes in spookd/" if dirty else "")


def machine(measured: str | None = None) -> list[tuple[str, str]]:
    """What the numbers were measured on."""
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):  # noqa: SIM115
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in open("/proc/meminfo"):  # noqa: SIM115
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    try:
        from support.gobuild import go_binary

        go = subprocess.run(
            [go_binary(), "version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except Exception as exc:
        go = f"unavailable ({exc})"
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    kubernetes = "unknown"
    gomod = ROOT / "tests" / "go" / "go.mod"
    for line in gomod.read_text().splitlines():
        if line.strip().startswith("k8s.io/kubernetes "):
            kubernetes = line.split()[1]
    return [
        ("CPU", f"{cpu}, {os.cpu_count()} cores visible" + (f", {mem} RAM" if mem else "")),
        ("Kernel", platform.release()),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("Go", go),
        ("Kubernetes (device manager, reference plugin)", kubernetes),
        ("Packages", ", ".join(versions)),
        (
            "Spookd",
            spookd_version()
            if measured is None or measured == spookd_version()
            else f"figures measured at {measured}; profiles at {spookd_version()}",
        ),
    ]


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def table(figures: list[Figure], *, markdown: bool) -> str:
    head = [
        "figure",
        "Spookd median",
        "spread (min–max)",
        "Go reference",
        "ratio",
        "SPEC §9 target",
        "verdict",
    ]
    rows = []
    for f in figures:
        ref = f"{fmt(_median(f.reference))} {f.unit}" if f.reference else "—"
        ratio = f"{f.ratio:.3g}×" if f.ratio is not None else "—"
        spread = f.spread + ("" if f.spread == "1 run" else f" {f.unit}")
        rows.append([f.name, f"{fmt(f.median)} {f.unit}", spread, ref, ratio, f.target_text, f.verdict])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    rows = [[c.replace("**", "") for c in r] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _median(values: list[float] | None) -> float:
    import statistics

    return statistics.median(values or [0.0])


# ---------------------------------------------------------------- misses


REMEDIES = {
    "allocate": (
        "**What would close the gap.** Encoding the response is most of the time, and it grows with the "
        "number of env entries (4 per device + 1): betterproto2 encodes field by field in Python. "
        "grpclib's `ProtoCodec` also takes google.protobuf messages, so generating `api_pb2` with protoc "
        "(upb backend, already installed with grpcio-tools/protobuf) for the DevicePlugin service "
        "(or only for `AllocateRequest`/`AllocateResponse` through a codec that picks by type) cuts the "
        "encode from the table above to tens of µs; that alone should bring 64 devices from ~2.5 ms to "
        "~0.4 ms p50 and 1 device by ~0.12 ms. The rest of a 1-device call is grpclib + h2 in pure "
        "Python (frame parsing, HPACK, header frames, ~0.3–0.4 ms on this machine): to reach ≤ 0.5 ms p50 "
        "reliably, either trim per-call work (h2 computes `repr(frame)` for its debug log on every frame; "
        "pre-encoded response headers/trailers) or move the socket to grpcio's C-core aio server."
    ),
    "parse": (
        "**What would close the gap.** The fast path (`spookd/config/fast.py`) already replaces the "
        "ruamel.yaml node tree with yaml-rs for configurations it can vouch for; what remains is "
        "yaml-rs's own parse (its figure above) and the walk over its plain data (the profile). The walk "
        "is plain Python per device (a few dict lookups, one regular expression for the instance ID, one "
        "Device struct, the identity index); a schema-driven `msgspec.convert` of the structure would "
        "take the per-device type checks into C."
    ),
    "lag": (
        "**What would close the gap.** A large block-style configuration is parsed in pieces of about "
        "32 KiB (`_cut` in `spookd/config/fast.py`), so no yaml-rs call holds the GIL for long (yaml-rs "
        "alone on the whole text: its stall figure above); the collector's full passes are held off and "
        "its young ones run as the parse goes (nothing waits for one long pass after it), and the switch "
        "interval is 1 ms while a parse runs, so the Python walk hands the GIL back to the loop within "
        "about 1 ms. What remains are single C calls of a few ms each: the text checks of `_safe` "
        "(`str.translate` over the whole text), decoding the bytes, and, on a loaded machine, the "
        "loop's thread waiting for a core. A configuration that is not cut (device lists written as "
        "flow collections, anchors) still stalls as yaml-rs alone does."
    ),
    "memory-configmap": (
        "**What is left, and what would close the gap.** Everything above the floor is Spookd's own "
        "imports (table above: the gRPC stack of grpclib, h2 and betterproto2, yaml-rs, msgspec, loguru, "
        "uvloop) plus the running daemon's state (event loop, servers, threads, the API client). "
        "ruamel.yaml and importlib.metadata are no longer loaded, prometheus_client only with "
        "`--http-addr`, and yaml-rs's mimalloc no longer commits its 4 MiB arena up front "
        "(`MIMALLOC_ARENA_EAGER_COMMIT=0`, set by the command line). 8 MiB above the floor would need "
        "one of the large imports gone: the DevicePlugin messages as protobuf-upb classes instead of "
        "betterproto2, or the standard library's logging instead of loguru."
    ),
    "startup": (
        "**What would close the gap.** A fixed part (interpreter, imports, first parse: ~0.3 s, see "
        "the 1-resource figure) and ~5–8 ms of CPU per resource: the reconciler binds the servers one "
        "after another (`Reconciler.apply` awaits each `tg.start`), each registration builds its own "
        "grpclib `Channel` (its construction alone shows in the profile) and h2 connection to "
        "`kubelet.sock`, the kubelet dials back (GetDevicePluginOptions, ListAndWatch) and Spookd logs "
        "3–4 info lines per resource. One shared Channel for all registrations, binding all sockets "
        "before the first await on registration, and per-resource lines at debug level (one summary "
        "line at info) cut the per-resource part; lazy imports of what the file source does not use "
        "(aiohttp, prometheus_client without `--http-addr`) cut the fixed part."
    ),
    "idle": (
        "**Where the wake-ups come from, and what would close the gap.** With the file source the only "
        "timers left are the two 5 s safety polls (`spookd/dirwatch.py`: the plugin directory and the "
        "config file's directory), about 0.4 loop wake-ups per second plus the worker thread that stats "
        "the files; nothing else runs. With the ConfigMap source the Lease claims "
        "(`spookd/kube/leases.py`) run although no device is `exclusive`: `_watch_loop` sleeps 0.5 s "
        "between rounds (`SPOOKD_CLAIM_POLL`) and `_renew_loop` wakes every `LEASE_DURATION / 3`, even "
        "with nothing shared or held — 2.2 wake-ups per second on their own, most of the ConfigMap "
        "source's cost. Start the claims only when the configuration has a shared device (or wait on "
        "an event that `claim()` and the config set), and read Leases by list + watch (SPEC §10) instead "
        "of polling; the ConfigMap watch itself only wakes for its server timeout and bookmarks."
    ),
    "growth": (
        "**Why, and what is left.** Not a leak of Spookd's objects: Python objects, pymalloc blocks and "
        "arenas, live interned strings, threads and file descriptors are flat after the first ~2000 "
        "reloads. The steps came from CPython's interned-string table: Python 3.11's pathlib interns "
        "every part of every path, and asyncinotify built a `pathlib.Path` of each event's file name (the"
        " kubelet's `.<random>` checkpoint files, ~11 new names per reload), so the table (2^16 slots, "
        "0.94 MiB) was rebuilt every ~2000 reloads and glibc kept each rebuilt copy on its heap. "
        "`spookd/dirwatch.py` now reads the inotify masks from the descriptor without building paths; one"
        " new name per reload is left (a restarted server's socket name). Over 4000 reloads: +2.77 MiB "
        "with a step before, +2.09 MiB and flat after reload 2250 with it. What remains is one doubling "
        "of the table (2^15 to 2^16 slots, ~0.6 MiB) and the first reloads' warm-up (one more pymalloc "
        "arena); glibc's mmap threshold at 128 KiB (`MALLOC_MMAP_THRESHOLD_=131072`) measured +1.94 MiB "
        "over 4000 reloads, but is not set."
    ),
    "growth-refused": (
        "**Why, and what would close the gap.** The growth tracks the refused registrations (see "
        "Findings), one open socket each: on every `Register` the kubelet dials back Spookd's socket "
        "(GetDevicePluginOptions) before it refuses with `already connected`, and on that failure path it "
        "never closes the connection it opened. Spookd then stops that server on the next reload, but "
        "grpclib's `Server.close()` only stops listening and cancels running handlers; an idle "
        "established connection stays open, and with it the `H2Protocol`, grpclib `Handler`, the "
        "`Server`, the `DevicePluginService` and the `ResourceServer` it serves (~35 KiB and one file "
        "descriptor per incarnation). Two fixes, both in `spookd/deviceplugin/server.py`: (1) in "
        "`ResourceServer._close`, after the flush timeout, close every connection the server accepted "
        "(track them with a `grpclib.server.Server` subclass whose `_protocol_factory` records the "
        "`H2Protocol`s, then `protocol.connection.close()`; Python 3.13's `close_clients()` does the same "
        "for asyncio servers) — this bounds memory and descriptors whatever the kubelet does; (2) avoid "
        "the refusal itself: a fresh socket name for every server incarnation, not only after a refusal "
        "(Findings)."
    ),
}


def profile_misses(figures: list[Figure], *, quick: bool) -> list[tuple[str, str]]:
    """Profiles for each kind of figure that missed, with what would close the gap."""
    from bench import parse, profiles

    missed = [f for f in figures if f.passed is False]
    names = " ".join(f.name for f in missed)
    sections: list[tuple[str, str]] = []

    def attempt(title: str, make: Callable[[], str]) -> None:
        print(f"   profiling: {title}", file=sys.stderr, flush=True)
        try:
            sections.append((title, make()))
        except Exception as exc:
            sections.append((title, f"(profiling failed: {type(exc).__name__}: {exc})"))

    def allocate() -> str:
        big = profiles.allocate(64, 300 if quick else 1000)
        small = profiles.allocate(1, 1000 if quick else 3000)
        return (
            "pyinstrument over Spookd (0.2 ms sampling; profiling slows each call several times, so read "
            "the shares, not the seconds) while allocbench sends 64-device requests:\n\n"
            f"```\n{big}\n```\n\nand 1-device requests:\n\n```\n{small}\n```\n\n"
            "The wire codec alone, measured in-process (µs per call):\n\n"
            f"{profiles.codec_costs()}\n\n"
            f"An answer Spookd has not kept yet (in-process): {profiles.answer_costs()}.\n\n"
            f"{_allocate_remedy()}"
        )

    def parse_section() -> str:
        top = parse.profile_top(parse.big_config(10_000))
        effect = parse.gc_effect(reps=1 if quick else 3)
        return (
            "cProfile of one parse of the 10 000-device config as the sources run it, by own time:\n\n"
            f"```\n{top}\n```\n\nThe garbage collector's share: {effect.text}.\n\n" + _parse_remedy(effect)
        )

    def memory() -> str:
        table = profiles.import_memory(profiles.CONFIGMAP_IMPORTS)
        return (
            "Resident memory added by each import, in the order a ConfigMap-source Spookd loads them:\n\n"
            f"```\n{table}\n```\n\n{REMEDIES['memory-configmap']}"
        )

    def startup() -> str:
        return (
            "pyinstrument over a Spookd start with 100 resources, until the device manager has them all:\n\n"
            f"```\n{profiles.startup(100)}\n```\n\n{REMEDIES['startup']}"
        )

    def idle() -> str:
        sources = sorted({"ConfigMap" in f.name for f in missed if f.name.startswith("idle")})
        parts = [profiles.idle_timers(configmap, 10.0 if quick else 30.0) for configmap in sources]
        return "\n\n".join([*parts, REMEDIES["idle"]])

    if "Allocate" in names:
        attempt("Allocate latency", allocate)
    if any(f.name.startswith("idle") for f in missed):
        attempt("Idle wake-ups", idle)
    if "parse" in names or "stall" in names:
        attempt("Parse + validate, and the loop stall", parse_section)
    if "ConfigMap) above the floor" in names:
        attempt("Memory with the ConfigMap source", memory)
    if any(f.name.startswith("start → registered") for f in missed):
        attempt("Start-up", startup)
    growth = next((f for f in missed if f.name.startswith("RSS growth")), None)
    if growth is not None:
        sections.append(("Memory growth over reloads", _growth_analysis(growth)))
    return sections


def _allocate_remedy() -> str:
    import importlib.util

    if importlib.util.find_spec("spookd._proto.upb") is None:
        return REMEDIES["allocate"]
    return (
        "**What would close the gap.** Spookd's own share of a call is gone from the profile: the answer "
        "for a requested ID set is encoded once and kept (`Answer` in `spookd/deviceplugin/service.py`, 64 "
        "per server, recomputed when a device is no longer served as the same object), and a unary answer "
        "goes out as one write (headers, message and trailers; grpclib writes three). What is left is "
        "grpclib + h2 + hpack in pure Python: receiving the request's HEADERS (HPACK decoding, h2's stream "
        "state machine, and h2 formatting `repr(frame)` for a trace log on every frame it receives), "
        "grpclib's per-request task and dispatch, and HPACK-encoding the answer's two header blocks. "
        "That is a fixed ~0.2–0.3 ms per call on this machine whatever the device count, so the ratio to "
        "Go is worst for 1 device. Closing it while keeping grpclib needs changes below Spookd: a cached "
        "HPACK encoding of the constant response headers in grpclib, h2 skipping the eager `repr` when "
        "its logger is off; or grpcio's C-core aio server on the socket."
    )


def _parse_remedy(effect: Any) -> str:
    return REMEDIES["parse"] + "\n\n" + REMEDIES["lag"]


def _growth_analysis(figure: Figure) -> str:
    curve = figure.extra.get("curve") or []
    fds = figure.extra.get("fds") or []
    refusals = int(figure.extra.get("refusals") or 0)
    lines = []
    if fds:
        lines.append(
            "Open file descriptors of the Spookd process after N reloads: "
            + ", ".join(f"{n}: {count}" for n, count in fds)
            + "."
        )
    if refusals and curve:
        grown_kib = curve[-1][1] - curve[0][1]
        lines.append(
            f"RSS grew {grown_kib / 1024:.0f} MiB over {refusals} refused registrations "
            f"({grown_kib / refusals:.0f} KiB each)."
        )
        lines.append(REMEDIES["growth-refused"])
    else:
        lines.append(REMEDIES["growth"])
    return "\n\n".join(lines)


# ---------------------------------------------------------------- reading a page back

#: Which runner group measured a figure, by the start of its name (for pages written before groups were
#: recorded with the figures).
GROUP_OF = (
    ("Allocate", "allocate"),
    ("config change → kubelet has it (file)", "change"),
    ("config change → kubelet has it (ConfigMap)", "configmap"),
    ("start → registered, 100 resources (ConfigMap)", "configmap"),
    ("RSS idle, 10 resources (ConfigMap)", "configmap"),
    ("start → registered", "startup"),
    ("kubelet restart", "restart"),
    ("parse + validate", "parse"),
    ("loop stall", "parse"),
    ("RSS idle, 10 resources (file source", "idle"),
    ("RSS idle, 10 resources (ConfigMap source", "idle"),
    ("RSS", "memory"),
    ("idle", "idle"),
)
#: Which group a profile section of the page belongs to, by its title.
SECTION_GROUP = {
    "Allocate latency": "allocate",
    "Parse + validate, and the loop stall": "parse",
    "Memory with the ConfigMap source": "configmap",
    "Start-up": "startup",
    "Memory growth over reloads": "memory",
    "Idle wake-ups": "idle",
}


def _number(text: str) -> float:
    import re

    found = re.search(r"-?[0-9]+(?:\.[0-9]+)?", text)
    if found is None:
        raise ValueError(f"no number in {text!r}")
    return float(found.group())


def figures_from_page(text: str) -> tuple[list[Figure], list[tuple[str, str, str]], str]:
    """The figures and profile sections of a page this module wrote (for ``--merge`` without results).

    A figure comes back with its median and its min and max as three values, so its median, spread and
    verdict read as before; its Go reference as one value (the median). Also the page's findings.
    """
    from bench.common import Target

    lines = text.splitlines()
    notes: dict[str, str] = {}
    for line in lines:
        if line.startswith("- **") and "**: " in line:
            name, _, note = line[4:].partition("**: ")
            notes[name] = note
    figures: list[Figure] = []
    in_results = False
    for line in lines:
        if line.startswith("## "):
            in_results = line == "## Results"
            continue
        if not (in_results and line.startswith("| ")) or line.startswith(("| figure", "|---")):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7:
            continue
        name, median, spread, ref, _ratio, target, _verdict = cells
        value, _, unit = median.partition(" ")
        if spread == "1 run":
            values = [float(value)]
        else:
            low, _, high = spread.split(" ")[0].partition("–")
            values = [float(low), float(value), float(high)]
        limit = ratio_limit = None
        if target != "—":
            parts = [p.strip() for p in target.split(", ")]
            for part in parts:
                if part.endswith("× Go"):
                    ratio_limit = _number(part)
                else:
                    limit = Target(_number(part), part)
        group = next((g for prefix, g in GROUP_OF if name.startswith(prefix)), "")
        figures.append(
            Figure(
                name=name,
                unit=unit,
                values=values,
                target=limit,
                reference=[_number(ref)] if ref != "—" else None,
                ratio_limit=ratio_limit,
                note=notes.get(name, ""),
                group=group,
            )
        )
    for line in lines:
        if line.startswith("RSS (MiB) after N reloads: "):
            points = line.partition(": ")[2].rstrip(".").split(", ")
            curve = [(int(n), round(float(mib) * 1024)) for n, _, mib in (p.partition(": ") for p in points)]
            for figure in figures:
                if figure.name.startswith("RSS growth"):
                    figure.extra["curve"] = curve
    sections: list[tuple[str, str, str]] = []
    findings: list[str] = []
    in_findings = False
    in_misses = False
    title: str | None = None
    body: list[str] = []
    for line in [*lines, "## end"]:
        if in_findings and not line.startswith("## "):
            findings.append(line)
        if line.startswith("## "):
            in_findings = line == "## Findings besides the numbers"
            if title is not None:
                sections.append((SECTION_GROUP.get(title, ""), title, "\n".join(body).strip()))
            in_misses, title, body = line.startswith("## Misses"), None, []
        elif in_misses and line.startswith("### "):
            if title is not None:
                sections.append((SECTION_GROUP.get(title, ""), title, "\n".join(body).strip()))
            title, body = line[4:], []
        elif title is not None:
            body.append(line)
    return figures, sections, "\n".join(findings).strip()


def loads_from_page(text: str) -> list[tuple[str, str]]:
    """The load averages per stage that a page recorded."""
    marker = "- **Load average (1/5/15 min) at each stage**: "
    for line in text.splitlines():
        if line.startswith(marker):
            stages = line[len(marker) :].split(". The machine")[0].split("; ")
            return [(st.partition(" ")[0], st.partition(" ")[2]) for st in stages]
    return []


def provenance_from_page(text: str) -> str:
    """When and at which commit a page's figures were measured."""
    when = spookd = ""
    for line in text.splitlines():
        if line.startswith("Last run: "):
            when = line[len("Last run: ") :].split(",")[0]
        if line.startswith("- **Spookd**: "):
            spookd = line[len("- **Spookd**: ") :].split(";")[0].removeprefix("figures measured at ")
    return f"run of {when}, {spookd}"


# ---------------------------------------------------------------- the page


def markdown(
    figures: list[Figure],
    sections: list[tuple[str, str]],
    *,
    elapsed: float,
    quick: bool,
    argv: list[str],
    loads: Sequence[tuple[str, str]] = (),
    failures: Sequence[tuple[str, str]] = (),
    measured: str | None = None,
    kept_findings: str = "",
) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# Benchmarks",
        "",
        "Spookd measured against the targets of SPEC §9 and, where one exists, against the Go reference "
        "plugin (`tests/go/cmd/goplugin`: the kubelet's own stub device plugin) in the same run. "
        "Benchmarks, never timed tests: nothing here fails a build.",
        "",
        "Run them with `nox -s bench` (or `python bench/run.py`; `--quick` for a smoke pass, "
        "`--only allocate,parse`, `--no-write` to leave this page alone). This page is written by the "
        "runner; edit `bench/report.py`, not the page.",
        "",
        f"Last run: {when}, `python bench/run.py {' '.join(argv)}`".rstrip()
        + f", {elapsed / 60:.1f} min"
        + (" (**quick run: few repetitions**)" if quick else "")
        + ".",
        "",
        "## Machine",
        "",
    ]
    out += [f"- **{k}**: {v}" for k, v in machine(measured)]
    if loads:
        out += [
            "- **Load average (1/5/15 min) at each stage**: "
            + "; ".join(f"{name} {value}" for name, value in loads)
            + ". The machine is shared with other work; Spookd and the Go reference are measured alternately "
            "in the same run, so their ratio is steadier than either absolute figure."
        ]
    out += ["", "## Results", "", table(figures, markdown=True), ""]
    if failures:
        out += ["**Groups that failed in this run** (no figures): "]
        out += [f"- `{name}`: {error}" for name, error in failures]
        out += [""]
    out += [
        "Median over the repetitions; the spread is min–max over the same repetitions. A figure passes "
        "when its median meets the target (and, for Allocate p50, when its ratio to the Go reference is "
        "at most the one its target names: issue #16's 1.5× for one device and 2× for 64, SPEC §9's 3× "
        "for 8). ² Issue #16's target for the idle file-source process (SPEC §9 asks ≤ 48 MiB).",
        "",
        "Notes per figure:",
        "",
    ]
    out += [f"- **{f.name}**: {f.note}" for f in figures if f.note]
    curve = next((f.extra["curve"] for f in figures if "curve" in f.extra), None)
    if curve:
        samples = ", ".join(f"{n}: {kib / 1024:.1f}" for n, kib in curve)
        out += ["", f"RSS (MiB) after N reloads: {samples}."]
    out += ["", "## How each figure is measured", "", METHOD.strip(), ""]
    apicost = [f for f in figures if "projections" in f.extra]
    if apicost:
        out += ["## API cost of cross-host exclusivity", ""]
        out += [
            "Requests counted by the API server (`apiserver_request_total`, WATCH apart, net of the API "
            "server's own background requests measured before any Spookd started). Projections scale the "
            "measured requests per held device; every Lease write reaches every watch that selects it.",
            "",
            "| scenario | req/node/min | requests by verb in the window | projection |",
            "|---|---|---|---|",
        ]
        for f in apicost:
            window = f.extra.get("window") or {}
            verbs = ", ".join(f"{k} {v:g}" for k, v in (window.get("requests") or {}).items())
            out.append(
                f"| {f.name} | {fmt(f.median)} | {verbs} ({window.get('seconds', 0):.0f} s) | "
                + "<br>".join(f.extra["projections"])
                + " |"
            )
        out += [""]
    findings = _findings(figures) or kept_findings
    if findings:
        out += ["## Findings besides the numbers", "", findings, ""]
    if sections:
        out += ["## Misses: profiles and what would close the gap", ""]
        for title, body in sections:
            out += [f"### {title}", "", body.strip(), ""]
    return "\n".join(out).rstrip() + "\n"


def group_of_section(title: str) -> str:
    """The runner group a profile section belongs to."""
    return SECTION_GROUP.get(title, "")


def findings(figures: list[Figure]) -> str:
    """The findings the figures themselves support (the kubelet's refusals during the reload run)."""
    return _findings(figures)


def _findings(figures: list[Figure]) -> str:
    growth = next((f for f in figures if "refusals" in f.extra), None)
    if growth is None or not growth.extra.get("refusals"):
        return ""
    stuck = growth.extra.get("stuck") or []
    refused_at = growth.extra.get("refused_at") or []
    text = (
        f"During the reload run the device manager refused Spookd's registration "
        f"{growth.extra['refusals']} times with `device plugin already connected`"
        + (f", and {', '.join(stuck)} was left unserved at the end" if stuck else "")
        + ". Cause, in the kubelet (k8s.io/kubernetes v1.37 `pkg/kubelet/cm/devicemanager`): when a "
        "resource is stopped and started again on the *same socket path* before the kubelet has torn down "
        "the old ListAndWatch stream, `PluginConnected` refuses the new endpoint; the failed "
        "`connectClient` then calls `deregisterClient` for that socket path, which also drops the *old* "
        "client from the handler's list, so when the old stream ends `runClient` finds no client and never "
        "calls `PluginDisconnected`. The stale endpoint (with the withdrawn, empty device list) stays "
        "“connected” and every later Register on that path is refused until the kubelet restarts; the "
        "connection the kubelet dialled back for the refused Register is not closed on its side either."
    )
    if len(refused_at) >= 3:
        steps = list(itertools.pairwise(refused_at))
        rates = [(b[1] - a[1]) / max(1, b[0] - a[0]) for a, b in steps]
        first, last = rates[0], rates[-1]
        text += (
            f"\n\nRefusals per reload: {first:.2f} in the first {steps[0][1][0]} reloads, {last:.2f} in the "
            f"last {steps[-1][1][0] - steps[-1][0][0]}."
        )
        per_readd = refused_at[-1][1] / max(1, refused_at[-1][0] / 2)
        if last > 1.5 * first + 0.05 or per_readd > 1.2:
            text += (
                f" That is {per_readd:.1f} refusals per re-add of the dropped resource: each wedged path "
                "stays wedged, and a re-added resource "
                "starts again from its base socket name and walks through every name wedged before it "
                "(one refusal, one kubelet dial-back and one `.g<n>` move per wedged name). A generation "
                "counter kept per resource name for the life of the process, or a fresh name for every "
                "server incarnation, makes a re-add cost at most one refusal, or none."
            )
    return text


METHOD = """
- **Allocate**: Spookd serves 64 devices of `example.com/widget` (two env keys each, like the walkthrough
  example), the Go reference serves 64 devices of another resource; both are registered with the kubelet's
  real device manager (`tests/go/cmd/nodeharness`). One Go client, `tests/go/cmd/allocbench`, dials both
  sockets with the kubelet's own plugin client (`devicemanager/plugin/v1beta1`: grpc-go with the kubelet's
  dial options) and the `k8s.io/kubelet` v1beta1 client, and sends one container request per call as the
  kubelet does, for 1, 8 and 64 devices, alternating targets in rounds (warm-up first). Each round gives a
  p50 and a p99; the table shows their medians over rounds. Note that Spookd answers with 4 env entries per
  device plus one (261 for 64 devices), the Go stub with 2: Spookd does more work per call by design.
  allocbench asks for the same IDs on every call, so after the first call Spookd answers from its kept
  encoding (as it does for any ID set it has answered before, up to 64 sets per resource); what a first
  answer costs is in the Allocate profile below. The server CPU per call is the plugin process's CPU time
  (`/proc/PID/task/*/schedstat`) over one allocbench run per size, divided by the calls each target got:
  unlike latency, it does not count time spent waiting for a core on a loaded machine.
- **config change → kubelet**: the config file is replaced atomically (write aside, rename) alternating
  between 8 and 9 devices; the clock stops at the first device-manager snapshot (`resources` over the
  harness's JSON protocol, polled back to back with a 1 ms sleep) that holds the new count. The poll
  period is the granularity and is reported. The ConfigMap variant times from sending the PUT to the
  API server (the PUT's own round trip is reported) with Spookd on `--configmap` and a kubeconfig.
- **start → registered**: from `Popen` of `python -m spookd run` (interpreter start and imports included)
  to the snapshot where every resource is registered with its capacity; resources have 2 devices each.
- **kubelet restart**: the harness stops the device manager and starts a new one (which deletes every
  socket in the plugin directory and recreates `kubelet.sock`, as a kubelet restart does); the clock starts
  when the new `kubelet.sock` listens and stops when all 10 resources are registered with full capacity.
  The Go stub re-registers from its own 10 s `Watch` poll (capped at 12 s here).
- **memory**: VmRSS from `/proc/PID/status`, 2 s after registration. The reload run alternates two
  configs (B drops one resource and adds a device to another, so every reload stops or starts a server
  and updates another) and waits for each `config applied` log line before the next write, so every
  reload is applied. The ConfigMap figure subtracts the VmRSS of
  `python -c "import kubernetes_asyncio.client"`.
- **parse + validate**: `spookd.sources.parsing.load_off_loop` (what both sources run: the
  fast path, else the ruamel.yaml reference) in-process on block-style YAML (10 resources, two env keys
  per device, ~114 bytes per device); beside it the reference alone (the figure before the fast path)
  and yaml-rs alone. The loop stall is the worst lateness of a 1 ms ticker on a uvloop event loop while
  `spookd.sources.parsing.parse` (or the named parse) runs in a worker thread; its result is kept, as
  the daemon keeps the configuration it applies, and dropping it on the loop (what a reload does with
  the configuration it replaces) is timed as its own figure.
- **idle**: Spookd with 10 resources of 2 devices each, and 10 Go stub plugins (`tests/go/cmd/goplugin`,
  each one resource of 2 devices, with its 10 s `Watch` loop on), all registered with the kubelet's real
  device manager, which keeps one ListAndWatch stream open per resource. After registration and 3 s of
  quiet, one window (60 s, 20 s in a quick run) is counted for Spookd and for the ten Go processes
  together, over the same wall-clock time: CPU as the sum over all threads of
  `/proc/PID/task/*/schedstat` (ns on a CPU), wake-ups as the sum of `voluntary_ctxt_switches` +
  `nonvoluntary_ctxt_switches` of `/proc/PID/task/*/status`. Variants: file source and ConfigMap source
  (the real kube-apiserver of `tests/support/apiserver.py`, a kubeconfig with a token), each with the HTTP
  endpoint off and on (`--http-addr 127.0.0.1:PORT`, never scraped during the window). On a loaded
  machine a wake-up costs more CPU (cold caches, waiting for a core), so the CPU share is an upper bound.
- **API cost**: `bench/apicost.py`. 20 `spookd run` processes (file source, `exclusive: true`) against one
  real kube-apiserver; the kubelet side is a lighter stand-in than the node harness
  (`tests/kubelet_double.py`: Registration, ListAndWatch, Allocate, plus a PodResources `List` server fed
  by what it allocated), all
  in one event loop of the benchmark. Windows: idle with one device held in the fleet; idle with every node
  holding one; churn (every node takes a random free device for 2–6 s, pauses 1–4 s); idle with devices
  shared within labs of 4 nodes. `apiserver_request_total` and `apiserver_watch_events_*` are scraped
  before and after each window.
"""
