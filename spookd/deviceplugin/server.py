"""One grpclib Device Plugin server per resource (SPEC §5).

A :class:`ResourceServer` owns one Unix socket. Its :meth:`ResourceServer.run` loop
binds the socket, starts serving, *then* registers with the kubelet, and waits for
trouble: its socket deleted or the kubelet restarted (rebind and re-register), or
every ListAndWatch stream gone without a new one (re-register). Snapshots reach the
open streams through one-slot asyncio queues where the newest snapshot wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import stat
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import grpclib
import grpclib.const
import grpclib.server
from grpclib.client import Channel
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.protocol import H2Protocol
from loguru import logger

from spookd._proto import v1beta1 as api
from spookd._proto.upb.v1beta1 import api_pb2 as pb
from spookd.allocation import container_env, host_devices, preferred_allocation
from spookd.claims import ClaimRefused, Claims
from spookd.config.model import HEALTHY, UNHEALTHY, Device
from spookd.deviceplugin import convert
from spookd.naming import generation_socket_name
from spookd.observe import metrics

KUBELET_SOCKET = "kubelet.sock"
REGISTER_TIMEOUT = 5.0
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 5.0
#: How long a lost ListAndWatch stream may stay without a successor.
STREAM_GRACE = 0.5
#: How long stopping waits for streams to deliver their last message.
FLUSH_TIMEOUT = 1.0
#: Registration failing this long is reported as a Kubernetes Event (tests shorten it).
REGISTRATION_EVENT_AFTER = float(os.environ.get("SPOOKD_REGISTRATION_EVENT_AFTER", "60"))

#: Called with (resource, error, seconds failing) once registration has failed for long.
RegistrationFailing = Callable[[str, str, float], None]


class PreEncoded:
    """A message encoded once and sent as-is on every stream."""

    __slots__ = ("data",)

    def __init__(self, message: api.ListAndWatchResponse) -> None:
        self.data = bytes(message)


class SnapshotCodec(ProtoCodec):
    """grpclib's protobuf codec, passing pre-encoded snapshots through untouched."""

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, PreEncoded):
            return message.data
        return super().encode(message, message_type)


class ClosingServer(grpclib.server.Server):
    """grpclib's server, closing its clients' connections too when it closes.

    grpclib closes the listening socket and cancels running requests but leaves
    accepted connections open until the peer hangs up. The kubelet keeps the
    connection of a plugin it no longer uses, so every stop of a resource would leak
    a socket (about 2.5 descriptors per reload were seen before this).
    """

    def __init__(self, handlers: Sequence[Any], codec: Any) -> None:
        super().__init__(handlers, codec=codec)
        self._protocols: weakref.WeakSet[H2Protocol] = weakref.WeakSet()

    def _protocol_factory(self) -> H2Protocol:
        protocol = super()._protocol_factory()
        self._protocols.add(protocol)
        return protocol

    def close(self) -> None:
        super().close()
        for protocol in list(self._protocols):
            connection = getattr(protocol, "connection", None)
            if connection is not None:
                connection.close()


class _Watcher:
    """One open ListAndWatch stream: a one-slot queue where the newest snapshot wins."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[int, PreEncoded] | None] = asyncio.Queue(maxsize=1)
        self.sent_version = -1

    def offer(self, item: tuple[int, PreEncoded] | None) -> None:
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(item)


class _Rebind(Exception):
    """The socket must be bound anew (deleted, replaced, or the kubelet restarted)."""


FileIdentity = tuple[int, int, int]


def file_identity(path: Path) -> FileIdentity | None:
    """What tells a file from its replacement: inode numbers are reused, creation times are not."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


class DevicePluginService(api.DevicePluginBase):
    """The DevicePlugin gRPC service of one resource."""

    def __init__(self, server: ResourceServer) -> None:
        self._server = server

    async def get_device_plugin_options(self, message: api.Empty) -> api.DevicePluginOptions:
        return convert.PLUGIN_OPTIONS

    async def get_preferred_allocation(
        self, message: api.PreferredAllocationRequest
    ) -> api.PreferredAllocationResponse:
        return convert.preferred_response(
            # devices another node holds go last: the kubelet should not pick them
            preferred_allocation(available, must, size, avoid=self._server.blocked)
            for available, must, size in convert.preferred_requests(message)
        )

    async def _allocate(self, stream: grpclib.server.Stream[pb.AllocateRequest, pb.AllocateResponse]) -> None:
        # Allocate is the call a pod start waits on: its messages are protobuf's own
        # (upb, in C) rather than betterproto2's, which encode field by field in Python.
        request = await stream.recv_message()
        assert request is not None
        started = time.perf_counter()
        server = self._server
        responses = []
        allocated = 0
        for container in request.container_requests:
            device_ids = list(container.devices_ids)
            devices = server.lookup(device_ids)
            if server.claims is not None:
                try:
                    await server.claims.claim(server.resource_name, device_ids)
                except ClaimRefused as exc:
                    metrics.ALLOCATE_ERRORS.labels(server.resource_name).inc()
                    raise GRPCError(grpclib.const.Status.FAILED_PRECONDITION, str(exc)) from None
            allocated += len(devices)
            responses.append(
                convert.container_response(
                    container_env(server.resource_name, devices), host_devices(devices)
                )
            )
        metrics.ALLOCATIONS.labels(server.resource_name).inc(allocated)
        metrics.ALLOCATE_LATENCY.labels(server.resource_name).observe(time.perf_counter() - started)
        await stream.send_message(pb.AllocateResponse(container_responses=responses))

    async def pre_start_container(
        self, message: api.PreStartContainerRequest
    ) -> api.PreStartContainerResponse:
        return api.PreStartContainerResponse()

    async def _list_and_watch(
        self, stream: grpclib.server.Stream[api.Empty, api.ListAndWatchResponse]
    ) -> None:
        # A plain handler rather than an async generator: when the server stops,
        # the stream returns normally and nothing is left for the garbage collector.
        await stream.recv_message()
        watcher = self._server.subscribe()
        try:
            while True:
                item = await watcher.queue.get()
                if item is None:
                    return
                version, encoded = item
                await stream.send_message(encoded)  # type: ignore[arg-type]
                watcher.sent_version = version
                self._server.progress()
        finally:
            self._server.unsubscribe(watcher)

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        mapping = super().__mapping__()
        mapping["/v1beta1.DevicePlugin/ListAndWatch"] = grpclib.const.Handler(
            self._list_and_watch,
            grpclib.const.Cardinality.UNARY_STREAM,
            api.Empty,
            api.ListAndWatchResponse,
        )
        mapping["/v1beta1.DevicePlugin/Allocate"] = grpclib.const.Handler(
            self._allocate,
            grpclib.const.Cardinality.UNARY_UNARY,
            pb.AllocateRequest,
            pb.AllocateResponse,
        )
        return mapping


class ResourceServer:
    """Serves one extended resource to the kubelet on one Unix socket."""

    def __init__(
        self,
        resource_name: str,
        devices: Sequence[Device],
        plugin_dir: Path,
        socket_name: str,
        generation: int = 1,
    ) -> None:
        self.resource_name = resource_name
        self.plugin_dir = plugin_dir
        self.socket_name = socket_name
        self.socket_path = plugin_dir / socket_name
        self.kubelet_socket = plugin_dir / KUBELET_SOCKET
        self.registered = False
        self._devices: dict[str, Device] = {}
        self._health: dict[str, str] = {}
        self._version = 0
        self._encoded = PreEncoded(api.ListAndWatchResponse())
        self._watchers: set[_Watcher] = set()
        self._wake = asyncio.Event()
        self._rebind_reason: str | None = None
        self._reregister_reason: str | None = None
        self._stream_lost = False
        self._bound_identity: FileIdentity | None = None
        self._registered_kubelet: FileIdentity | None = None
        self._closing = False
        self._progress = asyncio.Event()
        self.on_registration_failing: RegistrationFailing | None = None
        self.claims: Claims | None = None
        self.generation = generation
        if generation > 1:
            socket_name = generation_socket_name(socket_name, generation, str(plugin_dir))
            self.socket_name = socket_name
            self.socket_path = plugin_dir / socket_name
        self.socket_name_before = socket_name
        self._bound_path = self.socket_path
        self.blocked: set[str] = set()
        self.update(devices)

    # -- state -----------------------------------------------------------

    @property
    def devices(self) -> dict[str, Device]:
        """The devices served now, by instance ID."""
        return dict(self._devices)

    @property
    def streaming(self) -> bool:
        """True while at least one ListAndWatch stream is open."""
        return bool(self._watchers)

    def lookup(self, device_ids: Sequence[str]) -> list[Device]:
        """The devices for an Allocate request; INVALID_ARGUMENT for unknown or repeated IDs."""
        seen: set[str] = set()
        devices = []
        for device_id in device_ids:
            if device_id in seen:
                metrics.ALLOCATE_ERRORS.labels(self.resource_name).inc()
                raise GRPCError(
                    grpclib.const.Status.INVALID_ARGUMENT,
                    f"device ID {device_id!r} is requested twice for {self.resource_name}",
                )
            seen.add(device_id)
            device = self._devices.get(device_id)
            if device is None:
                metrics.ALLOCATE_ERRORS.labels(self.resource_name).inc()
                raise GRPCError(
                    grpclib.const.Status.INVALID_ARGUMENT,
                    f"unknown device ID {device_id!r} for {self.resource_name}",
                )
            devices.append(device)
        return devices

    def update(self, devices: Sequence[Device], health: Mapping[str, str] | None = None) -> None:
        """Serve ``devices`` from now on and push one snapshot to every stream.

        Without ``health``, a device without a health check is Healthy; one with a
        check keeps what its probes said, and starts Unhealthy until its first probe.
        """
        self._devices = {d.instance_id: d for d in devices}
        if health is None:
            health = {
                d.instance_id: self._health.get(d.instance_id, UNHEALTHY) if d.health_check else HEALTHY
                for d in devices
            }
        self._health = dict(health)
        self._publish()

    def set_blocked(self, device_ids: set[str]) -> None:
        """Devices another node holds: reported Unhealthy here until released."""
        if device_ids != self.blocked:
            self.blocked = set(device_ids)
            self._publish()

    def set_health(self, device_id: str, health: str) -> None:
        """A probe changed one device's health: push a snapshot if it really changed."""
        if device_id in self._devices and self._health.get(device_id) != health:
            self._health[device_id] = health
            self._publish()

    def _effective_health(self) -> dict[str, str]:
        if not self.blocked:
            return self._health
        return {i: UNHEALTHY if i in self.blocked else h for i, h in self._health.items()}

    def _publish(self) -> None:
        self._version += 1
        self._encoded = PreEncoded(convert.snapshot(self._effective_health()))
        for watcher in self._watchers:
            watcher.offer((self._version, self._encoded))
        self._record_device_metrics()
        logger.info(
            "devices reported",
            resource=self.resource_name,
            count=len(self._health),
            unhealthy=sum(h == UNHEALTHY for h in self._effective_health().values()),
            streams=len(self._watchers),
        )

    def _record_device_metrics(self) -> None:
        counts = {"Healthy": 0, "Unhealthy": 0}
        for health in self._effective_health().values():
            counts[health] = counts.get(health, 0) + 1
        for health, count in counts.items():
            metrics.DEVICES.labels(self.resource_name, health).set(count)

    def subscribe(self) -> _Watcher:
        """A new stream: it gets the current snapshot at once, then every change."""
        watcher = _Watcher()
        watcher.offer((self._version, self._encoded))
        self._watchers.add(watcher)
        self._stream_lost = False
        return watcher

    def progress(self) -> None:
        """A stream sent a snapshot or ended: wake whoever waits for the streams."""
        self._progress.set()

    async def _wait_streams(self, done: Callable[[], bool]) -> None:
        with anyio.move_on_after(FLUSH_TIMEOUT):
            while not done():
                self._progress.clear()
                await self._progress.wait()

    def unsubscribe(self, watcher: _Watcher) -> None:
        """A stream ended; if it was the last one, the run loop checks back."""
        self._watchers.discard(watcher)
        self.progress()
        if not self._watchers and not self._closing:
            self._stream_lost = True
            self._wake.set()

    # -- signals from the plugin-directory watch -------------------------

    def check_files(self) -> None:
        """Compare the socket and kubelet.sock with what this server bound and registered with."""
        if self._bound_identity is None:
            return
        if file_identity(self.socket_path) != self._bound_identity:
            self._rebind_reason = "socket deleted or replaced"
            self._wake.set()
            return
        kubelet = file_identity(self.kubelet_socket)
        if kubelet is None:
            return
        if not self.registered:
            self._wake.set()  # retry registration now
        elif kubelet != self._registered_kubelet:
            self._reregister_reason = "kubelet.sock recreated"
            self._wake.set()

    async def withdraw(self) -> None:
        """Report no devices, so the kubelet drops the capacity, and wait until sent."""
        self._devices = {}
        self._health = {}
        self._publish()
        await self._flush()

    async def _flush(self) -> None:
        await self._wait_streams(lambda: all(w.sent_version >= self._version for w in self._watchers))

    # -- lifecycle -------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve and stay registered until cancelled; then end streams and remove the socket."""
        started = False
        delay = BACKOFF_FIRST
        while True:
            try:
                server = await self._bind()
            except OSError as exc:
                logger.error(
                    "cannot serve on {path}: {error}; check that the plugin directory exists "
                    "and is writable, retrying in {delay:.1f}s",
                    path=str(self.socket_path),
                    error=exc.strerror or str(exc),
                    delay=delay,
                    resource=self.resource_name,
                )
                if not started:
                    task_status.started()
                    started = True
                await self._sleep_or_wake(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            delay = BACKOFF_FIRST
            try:
                if not started:
                    task_status.started()
                    started = True
                await self._register_until_done()
                await self._watch()
            except _Rebind as exc:
                logger.info("rebinding", resource=self.resource_name, reason=str(exc))
            finally:
                with anyio.CancelScope(shield=True):
                    await self._close(server)

    async def _bind(self) -> grpclib.server.Server:
        self._closing = False
        self.registered = False
        self._remove_stale()
        self._rebind_reason = None
        server = ClosingServer([DevicePluginService(self)], codec=SnapshotCodec())
        await server.start(path=str(self.socket_path))
        self._bound_path = self.socket_path
        self._bound_identity = file_identity(self.socket_path)
        logger.info("server started", resource=self.resource_name, socket=str(self.socket_path))
        return server

    def _remove_stale(self) -> None:
        try:
            mode = self.socket_path.lstat().st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            raise OSError(errno.EISDIR, f"{self.socket_path} is a directory; remove it so Spookd can bind")
        if not stat.S_ISSOCK(mode):
            logger.warning(
                "removing a non-socket file in the place of the plugin socket",
                path=str(self.socket_path),
            )
        self.socket_path.unlink(missing_ok=True)

    async def _close(self, server: grpclib.server.Server) -> None:
        self._closing = True
        self.registered = False
        for watcher in self._watchers:
            watcher.offer(None)
        await self._wait_streams(lambda: not self._watchers)
        server.close()
        with anyio.move_on_after(FLUSH_TIMEOUT):
            await server.wait_closed()
        if self._bound_identity is not None and file_identity(self._bound_path) == self._bound_identity:
            with contextlib.suppress(OSError):
                self._bound_path.unlink()
        self._bound_identity = None

    async def _register(self) -> None:
        channel = Channel(path=str(self.kubelet_socket))
        try:
            stub = api.RegistrationStub(channel)
            kubelet_identity = file_identity(self.kubelet_socket)
            await stub.register(
                convert.register_request(self.resource_name, self.socket_name),
                timeout=REGISTER_TIMEOUT,
            )
        finally:
            channel.close()
        self._registered_kubelet = kubelet_identity

    async def _register_until_done(self) -> None:
        delay = BACKOFF_FIRST
        attempt = 0
        failing_since = time.monotonic()
        reported = False
        while True:
            self._reregister_reason = None
            self._stream_lost = False
            try:
                await self._register()
            except (TimeoutError, OSError, GRPCError, StreamTerminatedError) as exc:
                if isinstance(exc, GRPCError) and "already connected" in (exc.message or ""):
                    # The kubelet refuses this socket path while it still holds an old
                    # stream on it, and may never let go (it drops its record of the old
                    # client on this refusal): serve under a new name instead.
                    self._move_socket()
                    raise _Rebind(f"kubelet still holds {self.socket_name_before}; moving") from None
                attempt += 1
                metrics.REGISTRATIONS.labels(self.resource_name, "failed").inc()
                log = logger.warning if attempt in (1, 10) or attempt % 100 == 0 else logger.debug
                log(
                    "registration failed: {error}; retrying (attempt {attempt}) in {delay:.2f}s",
                    error=_describe_error(exc),
                    attempt=attempt,
                    delay=delay,
                    resource=self.resource_name,
                    kubelet=str(self.kubelet_socket),
                )
                failing = time.monotonic() - failing_since
                if not reported and failing >= REGISTRATION_EVENT_AFTER and self.on_registration_failing:
                    reported = True
                    self.on_registration_failing(self.resource_name, _describe_error(exc), failing)
                await self._sleep_or_wake(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            self.registered = True
            metrics.REGISTRATIONS.labels(self.resource_name, "ok").inc()
            logger.info("registered", resource=self.resource_name, endpoint=self.socket_name)
            return

    def _move_socket(self) -> None:
        self.socket_name_before = self.socket_name
        self.generation += 1
        self.socket_name = generation_socket_name(self.socket_name, self.generation, str(self.plugin_dir))
        self.socket_path = self.plugin_dir / self.socket_name
        logger.warning(
            "the kubelet refused {old} as already connected; serving on {new}",
            old=self.socket_name_before,
            new=self.socket_name,
            resource=self.resource_name,
        )

    async def _sleep_or_wake(self, delay: float) -> None:
        with anyio.move_on_after(delay):
            await self._wake.wait()
        self._wake.clear()
        if self._rebind_reason:
            raise _Rebind(self._rebind_reason)

    async def _watch(self) -> None:
        """Wait for trouble while registered; re-register or rebind as needed."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._rebind_reason:
                raise _Rebind(self._rebind_reason)
            if self._reregister_reason:
                logger.info("re-registering", resource=self.resource_name, reason=self._reregister_reason)
                await self._register_until_done()
                continue
            if self._stream_lost:
                await self._sleep_or_wake(STREAM_GRACE)
                if self._stream_lost and not self._watchers:
                    logger.info(
                        "re-registering",
                        resource=self.resource_name,
                        reason="ListAndWatch stream ended without a new one",
                    )
                    await self._register_until_done()


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, GRPCError):
        return f"kubelet answered {exc.status.name}: {exc.message}"
    if isinstance(exc, FileNotFoundError):
        return "kubelet.sock does not exist (is the kubelet running?)"
    if isinstance(exc, ConnectionRefusedError):
        return "kubelet.sock refuses connections (is the kubelet running?)"
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer from the kubelet within {REGISTER_TIMEOUT:.0f}s"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__
