# ruff: noqa: RUF001, RUF003  (typographic – and × belong in the report)
"""Where the time and memory go, for the figures that miss their target."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any

from support.gobuild import build

from bench.allocate import DEVICES, SPOOKD_SOCKET
from bench.common import WIDGET, Spookd, config_yaml, short_dir, wait_until, write_atomic

IMPORT_SCRIPT = """
import importlib, sys
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
prev = rss()
print(f"{'bare interpreter':34s} {prev:5.1f} MiB")
for name in sys.argv[1:]:
    count = len(sys.modules)
    importlib.import_module(name)
    now = rss()
    print(f"+ {name:32s} {now - prev:+5.1f} MiB  ({len(sys.modules) - count} modules)")
    prev = now
"""

CONFIGMAP_IMPORTS = [
    "kubernetes_asyncio.client",
    "spookd._proto.v1beta1",
    "loguru",
    "uvloop",
    "spookd.config",
    "yaml_rs",
    "msgspec",
    "prometheus_client",
    "spookd.app",
    "spookd.sources.configmap",
    "spookd.cli",
]


def import_memory(modules: list[str]) -> str:
    """RSS added by importing each module in turn (what a process pays before it does anything)."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_SCRIPT, *modules], capture_output=True, text=True, check=True
    )
    return done.stdout.rstrip()


def _trim(report: str, anchor: str, lines: int) -> str:
    """The part of a pyinstrument text report from the first line containing ``anchor``."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", report).splitlines()
    for i, line in enumerate(text):
        if anchor in line:
            block = text[i : i + lines]
            indent = len(block[0]) - len(block[0].lstrip(" │├└─"))
            return "\n".join(b[indent:] if not b[:indent].strip(" │├└─") else b.lstrip() for b in block)
    return "\n".join(text[:lines])


def allocate(size: int, calls: int, lines: int = 18) -> str:
    """pyinstrument over Spookd while allocbench sends ``calls`` Allocate calls of ``size`` devices."""
    workdir, plugin_dir = short_dir("bpr-w-"), short_dir("bpr-")
    out = workdir / "profile.txt"
    spookd = Spookd(workdir, plugin_dir, profile=out)
    try:
        write_atomic(spookd.config, config_yaml([(WIDGET, f"dev-{i}") for i in range(DEVICES)]))
        spookd.start()
        socket = plugin_dir / SPOOKD_SOCKET
        wait_until(socket.exists, 30, "Spookd socket")
        time.sleep(0.5)
        subprocess.run(
            [str(build("allocbench")), f"-target=spookd={socket}", f"-sizes={size}",
             f"-calls={calls}", "-rounds=1", "-warmup=10"],
            capture_output=True, text=True, check=True, timeout=600,
        )  # fmt: skip
        spookd.stop(timeout=60)
        wait_until(out.exists, 30, "profile written")
        return _trim(out.read_text(), "request_handler", lines)
    finally:
        spookd.stop()
        shutil.rmtree(plugin_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


def startup(resources: int, lines: int = 26) -> str:
    """pyinstrument over Spookd from start until the device manager has every resource registered."""
    from support.nodeharness import NodeHarness

    from bench.common import resources_config
    from bench.node import Poller, all_served

    workdir, plugin_dir = short_dir("bps-w-"), short_dir("bps-")
    out = workdir / "profile.txt"
    spookd = Spookd(workdir, plugin_dir, profile=out)
    try:
        with NodeHarness(log_dir=workdir) as node:
            node.start(plugin_dir)
            write_atomic(spookd.config, resources_config(resources, 2))
            spookd.start()
            names = [f"example.com/r{r:03d}" for r in range(resources)]
            Poller(node).until(all_served(names, 2), timeout=60)
            spookd.stop(timeout=60)
        wait_until(out.exists, 30, "profile written")
        return _trim(out.read_text(), "spookd/__main__.py", lines)
    finally:
        spookd.stop()
        shutil.rmtree(plugin_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


def upb_module() -> tuple[Any, str]:
    """protobuf's v1beta1 module (Spookd's own if it ships one, else generated here) and its backend."""
    import importlib
    import tempfile

    from bench.common import ROOT

    try:
        from google.protobuf.internal import api_implementation  # type: ignore[import-untyped]

        backend = str(api_implementation.Type())
    except ImportError as exc:
        return None, f"unavailable ({exc})"
    try:
        return importlib.import_module("spookd._proto.upb.v1beta1.api_pb2"), backend
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as out:
        try:
            from grpc_tools import protoc  # type: ignore[import-untyped]

            protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}", "v1beta1/api.proto"])
            sys.path.insert(0, out)
            return importlib.import_module("v1beta1.api_pb2"), backend
        except Exception as exc:
            return None, f"unavailable ({exc})"
        finally:
            if out in sys.path:
                sys.path.remove(out)


def codec_costs(sizes: tuple[int, ...] = (1, 8, 64)) -> str:
    """Encode an AllocateResponse and decode an AllocateRequest: betterproto2 vs protobuf (upb)."""
    pb, backend = upb_module()
    lines = [
        "devices | env entries | betterproto2 encode | decode request | "
        f"protobuf ({backend}) encode | decode request",
        "---|---|---|---|---|---",
    ]
    lines += [_codec_row(n, pb) for n in sizes]
    return "\n".join(lines)


def _per_call_us(call: Callable[[], object], number: int) -> float:
    return timeit.timeit(call, number=number) / number * 1e6


def _codec_row(n: int, pb: Any) -> str:
    """One table row: encode/decode costs for ``n`` devices, betterproto2 and (if loaded) upb."""
    from spookd._proto import v1beta1 as api
    from spookd.allocation import container_env
    from spookd.config.model import Device

    devices = [
        Device(WIDGET, f"dev-{i}", env=(("IP", f"10.0.0.{i}"), ("PORT", str(8000 + i)))) for i in range(n)
    ]
    env = container_env(WIDGET, devices)
    message = api.AllocateResponse(container_responses=[api.ContainerAllocateResponse(envs=dict(env))])
    ids = [d.instance_id for d in devices]
    request = bytes(api.AllocateRequest(container_requests=[api.ContainerAllocateRequest(devices_ids=ids)]))
    k = 200 if n >= 64 else 1000
    enc = _per_call_us(lambda: bytes(message), k)
    dec = _per_call_us(lambda: api.AllocateRequest.parse(request), k)
    row = f"{n} | {len(env)} | {enc:.0f} µs | {dec:.0f} µs"
    if pb is None:
        return row + " | – | –"
    upb_enc = _per_call_us(
        lambda: pb.AllocateResponse(
            container_responses=[pb.ContainerAllocateResponse(envs=env)]
        ).SerializeToString(),
        k,
    )
    upb_dec = _per_call_us(lambda: pb.AllocateRequest.FromString(request), k)
    return row + f" | {upb_enc:.0f} µs | {upb_dec:.0f} µs"


#: Runs ``python -m spookd`` on plain asyncio (uvloop's timers cannot be wrapped) and counts, from SIGUSR1
#: on, every timer the loop schedules by the Spookd line that asked for it; the counts are written to the
#: path in SPOOKD_TIMERS_OUT on the next SIGUSR1.
TIMERS_SCRIPT = """
import asyncio, collections, importlib.util, os, runpy, signal, sys, traceback
real_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a, **k: None if name == "uvloop" else real_find_spec(name, *a, **k)
counting = []
def toggle(*_):
    if counting:
        counting.clear()
        dump()
    else:
        counting.append(True)
signal.signal(signal.SIGUSR1, toggle)
counts = collections.Counter()
real_call_at = asyncio.BaseEventLoop.call_at
def call_at(self, when, callback, *args, context=None):
    if counting:
        frames = traceback.extract_stack(limit=30)[:-1]
        mine = [f for f in frames if "/spookd/" in f.filename]
        where = mine[-1] if mine else frames[-2]
        counts[(f"{where.filename.split('/spookd/')[-1]}:{where.lineno} {where.name}",
                round(when - self.time(), 1))] += 1
    return real_call_at(self, when, callback, *args, context=context)
asyncio.BaseEventLoop.call_at = call_at
def dump():
    with open(os.environ["SPOOKD_TIMERS_OUT"], "w") as out:
        for (where, delay), n in counts.most_common(12):
            out.write(f"{n:5d} × {delay:6.1f} s  spookd/{where}\\n")
sys.argv = ["spookd", *sys.argv[1:]]
runpy.run_module("spookd", run_name="__main__", alter_sys=True)
"""


def idle_timers(configmap: bool, seconds: float = 20.0) -> str:
    """The timers an idle Spookd (10 resources) schedules in ``seconds``, by the Spookd line behind each."""
    import os
    import signal

    from support.nodeharness import NodeHarness

    from bench.common import resources_config
    from bench.node import Poller, all_served

    workdir, plugin_dir = short_dir("bpi-w-"), short_dir("bpi-")
    out = workdir / "timers.txt"
    script = workdir / "timers.py"
    script.write_text(TIMERS_SCRIPT)

    class Traced(Spookd):
        def argv(self) -> list[str]:
            return [sys.executable, str(script), *super().argv()[3:]]

    server = None
    try:
        with NodeHarness(log_dir=workdir) as node:
            node.start(plugin_dir)
            kwargs: dict[str, Any] = {}
            if configmap:
                from support.apiserver import ApiServer

                from bench.configmap import NAMESPACE, _put

                server = ApiServer.start(workdir / "apiserver")
                api = server.client()
                api.ensure({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
                _put(api, "idle", resources_config(10, 2))
                kwargs = {"configmap": f"{NAMESPACE}/idle", "kubeconfig": server.kubeconfig}
            spookd = Traced(workdir, plugin_dir, **kwargs)
            write_atomic(spookd.config, resources_config(10, 2))
            os.environ["SPOOKD_TIMERS_OUT"] = str(out)
            spookd.start()
            try:
                Poller(node).until(all_served([f"example.com/r{r:03d}" for r in range(10)], 2), timeout=60)
                time.sleep(3.0)
                os.kill(spookd.pid, signal.SIGUSR1)
                time.sleep(seconds)
                os.kill(spookd.pid, signal.SIGUSR1)
                wait_until(out.exists, 30, "timers written")
            finally:
                spookd.stop()
            return (
                f"Timers an idle Spookd ({'ConfigMap' if configmap else 'file'} source) scheduled in "
                f"{seconds:.0f} s, by count, delay and the Spookd line behind each (plain asyncio):\n\n"
                f"```\n{out.read_text().rstrip()}\n```"
            )
    finally:
        os.environ.pop("SPOOKD_TIMERS_OUT", None)
        if server is not None:
            server.close()
        shutil.rmtree(plugin_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


def answer_costs(sizes: tuple[int, ...] = (1, 8, 64)) -> str:
    """What an Allocate answer costs to compute and encode when it is not kept yet (µs, in-process)."""
    from spookd.config.model import Device
    from spookd.deviceplugin.service import DevicePluginService

    class Served:
        resource_name = WIDGET

        def __init__(self, devices: dict[str, Device]) -> None:
            self.devices = devices
            self.blocked: set[str] = set()

        def get(self, device_id: str) -> Device | None:
            return self.devices.get(device_id)

    devices = {
        f"dev-{i}": Device(WIDGET, f"dev-{i}", env=(("IP", f"10.0.0.{i}"), ("PORT", str(8000 + i))))
        for i in range(DEVICES)
    }
    service = DevicePluginService(Served(devices), None, lambda: 0)  # type: ignore[arg-type]
    parts = []
    for n in sizes:
        requested = (tuple(f"dev-{i}" for i in range(n)),)

        def miss(requested: tuple[tuple[str, ...], ...] = requested) -> object:
            service._answers.clear()
            return service._answer(requested)

        def hit(requested: tuple[tuple[str, ...], ...] = requested) -> object:
            answer = service._answers.get(requested)
            return answer is not None and answer.still_served(service._devices)

        miss()
        k = 300 if n >= 64 else 2000
        parts.append(f"{n} device{'s' if n > 1 else ''}: {_per_call_us(miss, k):.0f} µs to compute and "
                     f"encode, {_per_call_us(hit, k):.1f} µs to find and check a kept one")  # fmt: skip
    return "; ".join(parts)
