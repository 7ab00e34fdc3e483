"""Python client for ``tests/go/cmd/nodeharness``: the kubelet's real device manager.

The harness binary runs ``k8s.io/kubernetes/pkg/kubelet/cm/devicemanager`` (the
code the kubelet uses) and is driven by JSON lines on stdin/stdout. Its
Registration socket is hard-wired to ``/var/lib/kubelet/device-plugins/kubelet.sock``,
so :meth:`NodeHarness.start` launches it in a private mount namespace with the
given directory bind-mounted over that path (needs root and ``unshare``)::

    unshare --mount --propagation private sh -c \\
      'd="$1"; shift; mkdir -p /var/lib/kubelet/device-plugins &&
       mount --bind "$d" /var/lib/kubelet/device-plugins && exec "$@"' \\
      nodeharness-ns <plugin_dir> <binary> [args...]

A plugin in the normal namespace then uses ``<plugin_dir>`` as its plugin
directory (``kubelet.sock`` appears there).

With ``NodeHarness(pod_resources_socket=path)`` the harness also serves the
kubelet's PodResources API (``v1.PodResourcesLister``: List,
GetAllocatableResources, Get) on ``path``; ``tests/go/cmd/podresources-list``
is a small Go client that prints a response as JSON.

Usage::

    with NodeHarness() as h:
        h.start(plugin_dir)
        h.wait_for(lambda r: r.capacity("example.com/widget") == 2)
        res = h.admit("uid-1", {"c0": {"example.com/widget": 1}}).raise_for_error()
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any, Self, cast

from support import gobuild

__all__ = [
    "KUBELET_PLUGIN_DIR",
    "AdmitResult",
    "ContainerAllocation",
    "DeviceNode",
    "GoPlugin",
    "HarnessError",
    "Mount",
    "NodeHarness",
    "ResourceState",
    "Resources",
    "RestartResult",
    "launch_command",
]

#: Where the device manager insists on living (inside the harness's namespace).
KUBELET_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"

_NS_SCRIPT = (
    f'd="$1"; shift; mkdir -p {KUBELET_PLUGIN_DIR} && mount --bind "$d" {KUBELET_PLUGIN_DIR} && exec "$@"'
)

_EOF = object()


class HarnessError(RuntimeError):
    """The harness failed, timed out, or answered ``ok: false`` to a control request."""


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class ResourceState:
    """One resource as the device manager sees it."""

    name: str
    capacity: int
    allocatable: int
    #: device ID -> "Healthy" | "Unhealthy" (the manager's health sets)
    devices: dict[str, str]
    #: device IDs the manager counts as in use
    allocated: list[str]
    #: a live (not stopped) plugin endpoint exists
    registered: bool
    #: socket file name of the endpoint ("" for a checkpoint placeholder)
    endpoint: str
    #: the plugin's DevicePluginOptions, if connected
    options: dict[str, bool] | None

    @property
    def healthy(self) -> list[str]:
        return sorted(d for d, h in self.devices.items() if h == "Healthy")

    @property
    def unhealthy(self) -> list[str]:
        return sorted(d for d, h in self.devices.items() if h != "Healthy")

    @classmethod
    def from_json(cls, name: str, raw: Mapping[str, Any]) -> ResourceState:
        opts = raw.get("options")
        return cls(
            name=name,
            capacity=int(raw["capacity"]),
            allocatable=int(raw["allocatable"]),
            devices={str(k): str(v) for k, v in cast(dict[str, Any], raw["devices"]).items()},
            allocated=[str(x) for x in cast(list[Any], raw["allocated"])],
            registered=bool(raw["registered"]),
            endpoint=str(raw["endpoint"]),
            options=None
            if opts is None
            else {str(k): bool(v) for k, v in cast(dict[str, Any], opts).items()},
        )


@dataclass(frozen=True)
class Resources:
    """Reply of ``{"op":"resources"}``."""

    resources: dict[str, ResourceState]
    #: resources with a live endpoint
    registered: list[str]
    #: resources GetCapacity dropped during this call (endpoint stopped > 5 min)
    deleted: list[str]

    def get(self, name: str) -> ResourceState | None:
        return self.resources.get(name)

    def __getitem__(self, name: str) -> ResourceState:
        return self.resources[name]

    def __contains__(self, name: object) -> bool:
        return name in self.resources

    def capacity(self, name: str) -> int:
        r = self.resources.get(name)
        return 0 if r is None else r.capacity

    def allocatable(self, name: str) -> int:
        r = self.resources.get(name)
        return 0 if r is None else r.allocatable

    def is_registered(self, name: str) -> bool:
        return name in self.registered


@dataclass(frozen=True)
class Mount:
    container_path: str
    host_path: str
    read_only: bool


@dataclass(frozen=True)
class DeviceNode:
    container_path: str
    host_path: str
    permissions: str


@dataclass(frozen=True)
class ContainerAllocation:
    """What one container got: device IDs and the run-container options."""

    name: str
    init: bool
    #: resource name -> sorted device IDs
    devices: dict[str, list[str]]
    envs: dict[str, str]
    mounts: list[Mount]
    device_nodes: list[DeviceNode]
    annotations: dict[str, str]
    cdi_devices: list[str]

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ContainerAllocation:
        return cls(
            name=str(raw["name"]),
            init=bool(raw["init"]),
            devices={
                str(k): [str(i) for i in cast(list[Any], v)]
                for k, v in cast(dict[str, Any], raw["devices"]).items()
            },
            envs={str(k): str(v) for k, v in cast(dict[str, Any], raw["envs"]).items()},
            mounts=[
                Mount(str(m["container_path"]), str(m["host_path"]), bool(m["read_only"]))
                for m in cast(list[dict[str, Any]], raw["mounts"])
            ],
            device_nodes=[
                DeviceNode(str(d["container_path"]), str(d["host_path"]), str(d["permissions"]))
                for d in cast(list[dict[str, Any]], raw["device_nodes"])
            ],
            annotations={str(k): str(v) for k, v in cast(dict[str, Any], raw["annotations"]).items()},
            cdi_devices=[str(x) for x in cast(list[Any], raw["cdi_devices"])],
        )


@dataclass(frozen=True)
class AdmitResult:
    """Reply of ``{"op":"admit"}``; ``ok`` is False when the manager refused."""

    ok: bool
    pod: str
    containers: list[ContainerAllocation] = field(default_factory=list)
    #: the device manager's own error text (when not ok)
    error: str | None = None
    #: kubelet admission reason / message (when refused at admission)
    reason: str | None = None
    message: str | None = None
    #: "admit" or "run_container_options" (when not ok)
    stage: str | None = None

    def container(self, name: str) -> ContainerAllocation:
        for c in self.containers:
            if c.name == name:
                return c
        raise KeyError(f"no container {name!r} in admission result for pod {self.pod!r}: {self}")

    def raise_for_error(self) -> AdmitResult:
        if not self.ok:
            raise HarnessError(f"admission of pod {self.pod!r} failed at {self.stage}: {self.error}")
        return self


#: pod UID -> container name -> resource name -> device IDs
PodDevices = dict[str, dict[str, dict[str, list[str]]]]


@dataclass(frozen=True)
class RestartResult:
    #: sockets the new device manager deleted from the plugin dir on start
    removed_sockets: list[str]
    #: the restarted manager's device assignment for the active pods
    pods: PodDevices


def _parse_pods(raw: Mapping[str, Any]) -> PodDevices:
    out: PodDevices = {}
    for uid, pod in raw.items():
        containers = cast(dict[str, Any], cast(dict[str, Any], pod)["containers"])
        out[str(uid)] = {
            str(c): {str(r): [str(i) for i in ids] for r, ids in cast(dict[str, list[Any]], devs).items()}
            for c, devs in containers.items()
        }
    return out


# ---------------------------------------------------------------- launcher


def launch_command(
    plugin_dir: os.PathLike[str] | str, binary: os.PathLike[str] | str, *args: str
) -> list[str]:
    """The argv that runs ``binary`` with ``plugin_dir`` mounted at KUBELET_PLUGIN_DIR."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise HarnessError("'unshare' (util-linux) is required to run the node harness")
    return [
        unshare, "--mount", "--propagation", "private",
        "sh", "-c", _NS_SCRIPT, "nodeharness-ns", os.fspath(plugin_dir), os.fspath(binary), *args,
    ]  # fmt: skip


class NodeHarness:
    """A running nodeharness process (one kubelet device manager)."""

    def __init__(
        self,
        binary: pathlib.Path | None = None,
        *,
        log_dir: os.PathLike[str] | str | None = None,
        extra_args: Sequence[str] = (),
        request_timeout: float = 30.0,
        pod_resources_socket: os.PathLike[str] | str | None = None,
    ) -> None:
        """``pod_resources_socket``: serve the kubelet's PodResources API (v1 and v1alpha1,
        the kubelet's own server fed by this device manager and the active pods) on this
        Unix socket (``-pod-resources-socket``). Give a path in the normal filesystem, not
        in the plugin dir (the device manager deletes sockets there); at most 107 bytes.
        Its parent directory is created. The socket survives :meth:`restart`."""
        self._binary = binary
        self._log_dir = log_dir
        self._extra_args = list(extra_args)
        #: where the PodResources API is served (absolute), or None
        self.pod_resources_socket: pathlib.Path | None = None
        if pod_resources_socket is not None:
            sock = pathlib.Path(pod_resources_socket).absolute()
            if len(os.fsencode(sock)) > 107:
                raise HarnessError(f"pod_resources_socket path too long for a Unix socket: {sock}")
            self.pod_resources_socket = sock
            self._extra_args.append(f"-pod-resources-socket={sock}")
        self.request_timeout = request_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.plugin_dir: pathlib.Path | None = None
        #: the harness's stderr (klog output) is kept here
        self.stderr_path: pathlib.Path | None = None
        #: seconds from launch to the ready line
        self.start_seconds: float | None = None
        self.ready_info: dict[str, Any] = {}
        self._stderr_file: IO[str] | None = None
        self._lines: queue.Queue[object] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- lifecycle

    def start(self, plugin_dir: os.PathLike[str] | str, timeout: float = 30.0) -> None:
        """Launch the harness with ``plugin_dir`` as its plugin directory; wait until ready."""
        if self.proc is not None:
            raise HarnessError("harness already started")
        binary = self._binary if self._binary is not None else gobuild.build("nodeharness")
        self.plugin_dir = pathlib.Path(plugin_dir).resolve()
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        if self.pod_resources_socket is not None:
            if self.pod_resources_socket.parent.resolve() == self.plugin_dir:
                raise HarnessError("pod_resources_socket must not be in the plugin dir")
            self.pod_resources_socket.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="nodeharness-", suffix=".stderr.log", dir=self._log_dir)
        os.close(fd)
        self.stderr_path = pathlib.Path(name)
        self._stderr_file = open(self.stderr_path, "w", encoding="utf-8")  # noqa: SIM115
        argv = launch_command(self.plugin_dir, binary, *self._extra_args)
        started = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read_stdout, name="nodeharness-stdout", daemon=True)
        self._reader.start()
        try:
            first = self._next_line(timeout, "waiting for the ready line")
        except HarnessError:
            self._kill()
            raise
        if not first.get("ready"):
            self._kill()
            raise HarnessError(f"unexpected first line from nodeharness: {first!r}\n{self._stderr_tail()}")
        self.start_seconds = time.monotonic() - started
        self.ready_info = first

    def close(self, timeout: float = 10.0) -> None:
        """Stop the harness (``{"op":"stop"}``), killing it if it does not exit."""
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                with contextlib.suppress(HarnessError):
                    self.request({"op": "stop"}, timeout=timeout)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._kill()
        finally:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            if proc.stdout is not None:
                proc.stdout.close()
            if self._stderr_file is not None:
                self._stderr_file.close()
                self._stderr_file = None
            self.proc = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def stderr_text(self) -> str:
        """Everything the harness logged so far."""
        if self.stderr_path is None:
            return ""
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # -- protocol

    def request(self, req: Mapping[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Send one request and return the raw reply (no ``ok`` check)."""
        proc = self.proc
        if proc is None or proc.stdin is None:
            raise HarnessError("harness not started")
        with self._lock:
            try:
                proc.stdin.write(json.dumps(req) + "\n")
                proc.stdin.flush()
            except (BrokenPipeError, ValueError) as e:
                raise HarnessError(f"harness is gone ({e}); exit={proc.poll()}\n{self._stderr_tail()}") from e
            return self._next_line(self.request_timeout if timeout is None else timeout, f"reply to {req!r}")

    def _checked(self, req: Mapping[str, Any], timeout: float | None = None) -> dict[str, Any]:
        reply = self.request(req, timeout)
        if reply.get("ok") is not True:
            raise HarnessError(f"{req.get('op')} failed: {reply.get('error')!r} (reply {reply!r})")
        return reply

    def resources(self) -> Resources:
        """The device manager's view: GetCapacity plus per-device health and endpoints."""
        r = self._checked({"op": "resources"})
        raw = cast(dict[str, Any], r["resources"])
        return Resources(
            resources={
                str(k): ResourceState.from_json(str(k), cast(dict[str, Any], v)) for k, v in raw.items()
            },
            registered=[str(x) for x in cast(list[Any], r["registered"])],
            deleted=[str(x) for x in cast(list[Any], r["deleted"])],
        )

    def admit(
        self,
        pod: str,
        containers: Mapping[str, Mapping[str, int]],
        *,
        name: str | None = None,
        namespace: str | None = None,
        init_containers: Mapping[str, Mapping[str, int]] | None = None,
        sidecars: Collection[str] = (),
    ) -> AdmitResult:
        """Admit a pod: the kubelet's admission path (topology manager -> Allocate per container),
        then GetDeviceRunContainerOptions per container.

        ``containers`` maps container name -> {resource: count}, in order; ``sidecars`` names
        init containers with restartPolicy Always. A refusal is returned with ``ok=False``.
        """
        req: dict[str, Any] = {
            "op": "admit",
            "pod": pod,
            "containers": [{"name": c, "requests": dict(r)} for c, r in containers.items()],
        }
        if name is not None:
            req["name"] = name
        if namespace is not None:
            req["namespace"] = namespace
        if init_containers:
            req["init_containers"] = [
                {
                    "name": c,
                    "requests": dict(r),
                    **({"restart_policy": "Always"} if c in sidecars else {}),
                }
                for c, r in init_containers.items()
            ]
        reply = self.request(req)
        if reply.get("ok") is True:
            return AdmitResult(
                ok=True,
                pod=pod,
                containers=[
                    ContainerAllocation.from_json(c) for c in cast(list[dict[str, Any]], reply["containers"])
                ],
            )
        if "stage" not in reply:  # a malformed request, not a refusal
            raise HarnessError(f"admit failed: {reply.get('error')!r}")
        return AdmitResult(
            ok=False,
            pod=pod,
            error=cast(str | None, reply.get("error")),
            reason=cast(str | None, reply.get("reason")),
            message=cast(str | None, reply.get("message")),
            stage=cast(str | None, reply.get("stage")),
        )

    def remove(self, pod: str) -> dict[str, list[str]]:
        """The pod is gone: drop it from active pods and run UpdateAllocatedDevices.

        Returns resource -> device IDs that were freed."""
        r = self._checked({"op": "remove", "pod": pod})
        return {str(k): [str(i) for i in v] for k, v in cast(dict[str, list[Any]], r["freed"]).items()}

    def pods(self) -> PodDevices:
        """Device assignment (GetDevices) of every active pod."""
        return _parse_pods(cast(dict[str, Any], self._checked({"op": "pods"})["pods"]))

    def checkpoint(self) -> dict[str, Any] | None:
        """The device manager's checkpoint file (kubelet_internal_checkpoint), parsed."""
        return cast(dict[str, Any] | None, self._checked({"op": "checkpoint"})["checkpoint"])

    def restart(self) -> RestartResult:
        """Kubelet restart: stop the manager, start a new one (which reads the checkpoint and
        deletes every socket in the plugin dir). Returns once the new kubelet.sock listens."""
        r = self._checked({"op": "restart"})
        return RestartResult(
            removed_sockets=[str(x) for x in cast(list[Any], r["removed_sockets"])],
            pods=_parse_pods(cast(dict[str, Any], r["pods"])),
        )

    def wait_for(
        self, predicate: Callable[[Resources], bool], timeout: float = 10.0, interval: float = 0.05
    ) -> Resources:
        """Poll resources() until ``predicate`` holds; return the matching snapshot."""
        deadline = time.monotonic() + timeout
        while True:
            snap = self.resources()
            if predicate(snap):
                return snap
            if time.monotonic() >= deadline:
                raise HarnessError(
                    f"condition not met within {timeout}s; last resources: {snap!r}\n" + self._stderr_tail()
                )
            time.sleep(interval)

    # -- internals

    def _read_stdout(self) -> None:
        proc = self.proc
        if proc is None or proc.stdout is None:
            self._lines.put(_EOF)
            return
        try:
            for raw in proc.stdout:
                line = raw.strip()
                if line:
                    self._lines.put(line)
        except (OSError, ValueError):
            pass
        self._lines.put(_EOF)

    def _next_line(self, timeout: float, what: str) -> dict[str, Any]:
        try:
            item = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise HarnessError(
                f"nodeharness: timed out after {timeout}s {what}\n{self._stderr_tail()}"
            ) from None
        if item is _EOF:
            code = self.proc.wait(timeout=5) if self.proc is not None else None
            raise HarnessError(f"nodeharness exited (code {code}) while {what}\n{self._stderr_tail()}")
        try:
            return cast(dict[str, Any], json.loads(cast(str, item)))
        except json.JSONDecodeError as e:
            raise HarnessError(f"nodeharness wrote a non-JSON line {item!r} while {what}") from e

    def _stderr_tail(self, lines: int = 60) -> str:
        text = self.stderr_text.splitlines()[-lines:]
        return f"--- nodeharness stderr ({self.stderr_path}) ---\n" + "\n".join(text)

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class GoPlugin:
    """The Go reference plugin (``tests/go/cmd/goplugin``: the kubelet's stub device plugin).

    Runs in the normal mount namespace, serving ``n`` healthy devices ``<id_prefix>0..n-1``
    of ``resource`` on ``<plugin_dir>/<socket>`` and registering with
    ``<plugin_dir>/kubelet.sock``. :meth:`start` returns once registration succeeded.
    """

    def __init__(
        self,
        plugin_dir: os.PathLike[str] | str,
        resource: str = "example.com/widget",
        n: int = 2,
        *,
        socket: str = "goplugin.sock",
        id_prefix: str = "dev-",
        preferred: bool = False,
        watch: bool = True,
        binary: pathlib.Path | None = None,
        log_dir: os.PathLike[str] | str | None = None,
    ) -> None:
        self.plugin_dir = pathlib.Path(plugin_dir)
        self.resource = resource
        self.n = n
        self.socket = socket
        self.socket_path = self.plugin_dir / socket
        self.devices = [f"{id_prefix}{i}" for i in range(n)]
        self._args = [
            f"-resource={resource}",
            f"-n={n}",
            f"-plugin-dir={self.plugin_dir}",
            f"-socket={socket}",
            f"-id-prefix={id_prefix}",
            f"-preferred={str(preferred).lower()}",
            f"-watch={str(watch).lower()}",
        ]
        self._binary = binary
        self._log_dir = log_dir
        self.proc: subprocess.Popen[str] | None = None
        self.stderr_path: pathlib.Path | None = None
        self._stderr_file: IO[str] | None = None

    def start(self, timeout: float = 40.0) -> Self:
        binary = self._binary if self._binary is not None else gobuild.build("goplugin")
        fd, name = tempfile.mkstemp(prefix="goplugin-", suffix=".stderr.log", dir=self._log_dir)
        os.close(fd)
        self.stderr_path = pathlib.Path(name)
        self._stderr_file = open(self.stderr_path, "w", encoding="utf-8")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [os.fspath(binary), *self._args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.proc.stdout
        assert stdout is not None

        def read() -> None:
            lines.put(stdout.readline())

        threading.Thread(target=read, daemon=True).start()
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            raise HarnessError(f"goplugin not ready after {timeout}s\n{self.stderr_text}") from None
        if not line.strip() or not json.loads(line).get("ready"):
            self.stop()
            raise HarnessError(f"goplugin failed to start: {line!r}\n{self.stderr_text}")
        return self

    @property
    def stderr_text(self) -> str:
        if self.stderr_path is None:
            return ""
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the plugin and wait; returns its exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if proc.stdout is not None:
            proc.stdout.close()
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None
        self.proc = None
        return proc.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
