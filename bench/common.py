# ruff: noqa: RUF001, RUF003  (typographic – and × belong in the report)
"""What every benchmark shares: paths, configs, a Spookd process, statistics, results."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
for _path in (str(ROOT), str(TESTS)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

NODE = "bench-node"
WIDGET = "example.com/widget"


# ---------------------------------------------------------------- configs


def device_yaml(resource: str, instance_id: str, index: int) -> str:
    """One device in block style with two env keys, as in the walkthrough example."""
    return (
        f"      - resourceName: {resource}\n"
        f'        instanceID: "{instance_id}"\n'
        f"        env: {{IP: {_ip(index)}, PORT: {8000 + index % 1000}}}\n"
    )


def _ip(index: int) -> str:
    return f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}"


def config_yaml(devices: Sequence[tuple[str, str]], hosts: Sequence[str] = (NODE,)) -> str:
    """A config giving ``hosts`` the (resource, instance ID) pairs in ``devices``."""
    body = "".join(device_yaml(r, i, n) for n, (r, i) in enumerate(devices))
    return f"deviceMapping:\n  - hosts: [{', '.join(hosts)}]\n    devices:\n{body}"


def resources_config(resources: int, per_resource: int, *, extra: int = 0) -> str:
    """``resources`` resources ``example.com/r<k>`` of ``per_resource`` devices (``extra`` more on r000)."""
    pairs = [
        (f"example.com/r{r:03d}", f"dev-{d}")
        for r in range(resources)
        for d in range(per_resource + (extra if r == 0 else 0))
    ]
    return config_yaml(pairs)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` the way editors and ConfigMap volumes do: write aside, rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ---------------------------------------------------------------- processes


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def short_dir(prefix: str) -> Path:
    """A fresh directory with a short path (Unix socket paths hold 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class Spookd:
    """``python -m spookd run`` as it runs in production (info level, JSON logs to a file)."""

    def __init__(
        self,
        workdir: Path,
        plugin_dir: Path,
        *,
        configmap: str | None = None,
        kubeconfig: Path | None = None,
        profile: Path | None = None,
        http_addr: str = "",
    ) -> None:
        self.workdir = workdir
        self.http_addr = http_addr
        self.plugin_dir = plugin_dir
        # The config's directory is watched: keep the log out of it, or each log line is a change.
        (workdir / "config").mkdir(exist_ok=True)
        self.config = workdir / "config" / "config.yaml"
        self.log = workdir / "spookd.log"
        self.configmap = configmap
        self.kubeconfig = kubeconfig
        self.profile = profile
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def argv(self) -> list[str]:
        source = ["--configmap", self.configmap] if self.configmap else ["--config", str(self.config)]
        args = [
            "run", *source, "--node-name", NODE, "--plugin-dir", str(self.plugin_dir),
            "--http-addr", self.http_addr, "--log-format", "json",
        ]  # fmt: skip
        if self.profile is not None:
            return [
                sys.executable, "-m", "pyinstrument", "-r", "text", "-o", str(self.profile),
                "--interval", "0.0002", "--show", "*/grpclib/*", "--show", "*/betterproto2/*",
                "--show", "*/h2/*", "-m", "spookd", *args,
            ]  # fmt: skip
        return [sys.executable, "-m", "spookd", *args]

    def start(self) -> Spookd:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=ROOT
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def new_records(self) -> list[dict[str, Any]]:
        """JSON log lines written since the last call."""
        with self.log.open("rb") as handle:
            handle.seek(self._log_offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        self._log_offset += end
        out = []
        for line in data[:end].splitlines():
            if line.startswith(b"{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@contextmanager
def running(spookd: Spookd) -> Iterator[Spookd]:
    spookd.start()
    try:
        yield spookd
    finally:
        spookd.stop()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {timeout:.0f}s")
        time.sleep(interval)


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Target:
    """A SPEC §9 bound: the figure passes when its median is at most ``limit``."""

    limit: float
    text: str


@dataclass
class Figure:
    """One measured figure: a value per repetition, and the Go reference's if there is one."""

    name: str
    unit: str
    values: list[float]
    target: Target | None = None
    reference: list[float] | None = None
    #: the ratio to the reference must stay at or below this (SPEC: p50 ≤ 3× Go)
    ratio_limit: float | None = None
    note: str = ""
    profile: str = ""
    remedy: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: the runner's group that measured it (allocate, change, ...)
    group: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Figure:
        target = raw.get("target")
        return cls(**{**raw, "target": Target(**target) if target else None})

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> str:
        if len(self.values) == 1:
            return "1 run"
        return f"{fmt(min(self.values))}–{fmt(max(self.values))}"

    @property
    def ratio(self) -> float | None:
        if not self.reference:
            return None
        ref = statistics.median(self.reference)
        return self.median / ref if ref > 0 else None

    @property
    def passed(self) -> bool | None:
        if self.target is None and self.ratio_limit is None:
            return None
        ok = True
        if self.target is not None:
            ok = ok and self.median <= self.target.limit
        if self.ratio_limit is not None and self.ratio is not None:
            ok = ok and self.ratio <= self.ratio_limit
        return ok

    @property
    def verdict(self) -> str:
        passed = self.passed
        return "—" if passed is None else ("pass" if passed else "**miss**")

    @property
    def target_text(self) -> str:
        parts = []
        if self.target is not None:
            parts.append(self.target.text)
        if self.ratio_limit is not None:
            parts.append(f"≤ {self.ratio_limit:g}× Go")
        return ", ".join(parts) or "—"


def fmt(value: float) -> str:
    """A number with about three significant digits."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(p / 100 * len(ordered) + 0.999999) - 1))
    return ordered[k]
