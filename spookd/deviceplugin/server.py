"""One grpclib Device Plugin server per resource: the I/O shell of the registration machine (SPEC §5).

A :class:`ResourceServer` owns one Unix socket. It binds, serves, registers with
the kubelet and carries out what :class:`~spookd.deviceplugin.registration.Registration`
decides; what it sees (a bind or Register result, the files of the plugin
directory, streams opening and closing, a timer) goes back in as events.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import stat
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import grpclib.server
from grpclib.client import Channel
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.protocol import H2Protocol
from loguru import logger

from spookd._proto import v1beta1 as api
from spookd.claims import Claims
from spookd.config.model import Device
from spookd.deviceplugin import convert
from spookd.deviceplugin import registration as reg
from spookd.deviceplugin.service import DevicePluginService
from spookd.deviceplugin.snapshots import FLUSH_TIMEOUT, DeviceList, SnapshotCodec, Stream
from spookd.deviceplugin.watch import KUBELET_SOCKET
from spookd.dirwatch import FileIdentity, file_identity
from spookd.grpccalls import hung_up_as_reset
from spookd.observe import metrics

REGISTER_TIMEOUT = 5.0

#: Called with (resource, error, seconds failing) once registration has failed for long.
RegistrationFailing = Callable[[str, str, float], None]


class ClosingServer(grpclib.server.Server):
    """grpclib's server, closing its clients' connections too when it closes.

    grpclib closes the listening socket and cancels running requests but leaves
    accepted connections open until the peer hangs up, and offers no public way to
    reach them (asyncio's ``Server.close_clients`` needs Python 3.13). The kubelet
    keeps the connection of a plugin it no longer uses, so every stop of a resource
    would leak a socket (about 2.5 descriptors per reload were seen before this).
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


class ResourceServer:
    """Serves one extended resource to the kubelet on one Unix socket."""

    def __init__(
        self,
        resource_name: str,
        devices: Sequence[Device],
        plugin_dir: Path,
        socket_name: str,
        generation: int = 1,
        *,
        claims: Claims | None = None,
        blocked: set[str] | None = None,
        on_registration_failing: RegistrationFailing | None = None,
        report_failing_after: float = 60.0,
    ) -> None:
        self.resource_name = resource_name
        self.plugin_dir = plugin_dir
        self.kubelet_socket = plugin_dir / KUBELET_SOCKET
        self.registration = reg.Registration(
            socket_name, str(plugin_dir), generation, report_after=report_failing_after
        )
        self.device_list = DeviceList(resource_name, devices, blocked or set(), self._stream_changed)
        self._claims = claims
        self._on_registration_failing = on_registration_failing
        self._inbox: deque[reg.Event] = deque()
        #: the plugin directory changed since the files were last looked at
        self._files_changed = False
        self._arrived = asyncio.Event()
        self._server: grpclib.server.Server | None = None
        self._bound: tuple[Path, FileIdentity | None] | None = None

    # -- what the servers' owner and the health endpoint ask ---------------

    @property
    def socket_name(self) -> str:
        """The socket file name the resource is served on now."""
        return self.registration.socket_name

    @property
    def socket_path(self) -> Path:
        """The socket path the resource is served on now."""
        return self.plugin_dir / self.socket_name

    @property
    def registered(self) -> bool:
        """The kubelet has taken the registration."""
        return self.registration.registered

    @property
    def streaming(self) -> bool:
        """True while at least one ListAndWatch stream is open."""
        return self.device_list.streaming

    @property
    def devices(self) -> dict[str, Device]:
        """The devices served now, by instance ID."""
        return self.device_list.devices

    def update(self, devices: Sequence[Device], health: Mapping[str, str] | None = None) -> None:
        """Serve ``devices`` from now on (see DeviceList.update)."""
        self.device_list.update(devices, health)

    def set_blocked(self, device_ids: set[str]) -> None:
        """Devices another node holds: reported Unhealthy here until released."""
        self.device_list.set_blocked(device_ids)

    def set_health(self, device_id: str, health: str) -> None:
        """A probe changed one device's health."""
        self.device_list.set_health(device_id, health)

    async def withdraw(self) -> None:
        """Report no devices, so the kubelet drops the capacity, and wait until sent."""
        await self.device_list.withdraw()

    def check_files(self) -> None:
        """The plugin directory changed: compare the socket and kubelet.sock with what was seen."""
        self._files_changed = True
        self._arrived.set()

    # -- the shell ---------------------------------------------------------

    def _tell(self, event: reg.Event) -> None:
        self._inbox.append(event)
        self._arrived.set()

    def _stream_changed(self, stream: Stream, opened: bool) -> None:
        self._tell(reg.StreamChanged(stream.epoch, opened))

    async def _next_event(self, deadline: float | None) -> reg.Event:
        while not self._inbox and not self._files_changed:
            self._arrived.clear()
            with anyio.move_on_at(math.inf if deadline is None else deadline) as waited:
                await self._arrived.wait()
            if waited.cancelled_caught:
                return reg.TimerFired()
        if self._inbox:
            return self._inbox.popleft()
        # The files are read now, not when the directory changed: a change seen
        # before a rebind must not be judged against the socket bound since.
        self._files_changed = False
        return reg.FilesSeen(file_identity(self.socket_path), file_identity(self.kubelet_socket))

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve and stay registered until cancelled; then say no devices, end streams, remove the socket."""
        pending = deque(self.registration.start())
        deadline: float | None = None
        started = False
        try:
            while True:
                while pending:
                    action = pending.popleft()
                    if isinstance(action, reg.Wait):
                        deadline = anyio.current_time() + action.delay
                        continue
                    pending.extendleft(reversed(await self._perform(action)))
                    if isinstance(action, reg.Bind) and not started:
                        task_status.started()
                        started = True
                if not self.registration.waiting:
                    deadline = None
                event = await self._next_event(deadline)
                if isinstance(event, reg.TimerFired):
                    deadline = None
                pending.extend(self.registration.handle(event))
        finally:
            with anyio.CancelScope(shield=True):
                await self._last_word()
                await self._close()

    async def _last_word(self) -> None:
        """Tell every open stream "no devices" before it ends (shutdown, resource removed).

        The kubelet keeps a resource whose stream ended at the count it last heard for its
        endpoint grace period (5 minutes): capacity drops to 0 only if that count is 0.
        """
        if self.device_list.streaming and self.device_list.devices:
            await self.device_list.withdraw()

    async def _perform(self, action: reg.Action) -> list[reg.Action]:
        if isinstance(action, reg.Bind):
            return await self._bind(action)
        if isinstance(action, reg.Register):
            return await self._register(action)
        if isinstance(action, reg.Close):
            await self._close()
        elif isinstance(action, reg.ReportFailing) and self._on_registration_failing is not None:
            self._on_registration_failing(self.resource_name, action.error, action.seconds)
        return []

    async def _bind(self, action: reg.Bind) -> list[reg.Action]:
        path = self.plugin_dir / action.socket_name
        if action.reason:
            logger.info("rebinding", resource=self.resource_name, reason=action.reason)
        try:
            _remove_stale(path)
            server = ClosingServer(
                [DevicePluginService(self.device_list, self._claims, lambda: self.registration.epoch)],
                codec=SnapshotCodec(),
            )
            await server.start(path=str(path))
        except OSError as exc:
            actions = self.registration.handle(reg.BindFailed())
            logger.error(
                "cannot serve on {path}: {error}; check that the plugin directory exists "
                "and is writable, retrying in {delay:.1f}s",
                path=str(path),
                error=exc.strerror or str(exc),
                delay=_delay(actions),
                resource=self.resource_name,
            )
            return actions
        self._server = server
        identity = file_identity(path)
        self._bound = (path, identity)
        logger.info("server started", resource=self.resource_name, socket=str(path))
        return self.registration.handle(reg.Bound(identity))

    async def _register(self, action: reg.Register) -> list[reg.Action]:
        if action.reason:
            logger.info("re-registering", resource=self.resource_name, reason=action.reason)
        channel = Channel(path=str(self.kubelet_socket))
        kubelet = file_identity(self.kubelet_socket)
        try:
            stub = api.RegistrationStub(channel)
            await hung_up_as_reset(
                stub.register(
                    convert.register_request(self.resource_name, self.socket_name),
                    timeout=REGISTER_TIMEOUT,
                )
            )
        except (TimeoutError, OSError, GRPCError, StreamTerminatedError) as exc:
            already = isinstance(exc, GRPCError) and "already connected" in (exc.message or "")
            before = self.socket_name
            actions = self.registration.handle(
                reg.RegisterFailed(_describe_error(exc), time.monotonic(), already)
            )
            if already:
                logger.warning(
                    "the kubelet refused {old} as already connected; serving on {new}",
                    old=before,
                    new=self.socket_name,
                    resource=self.resource_name,
                )
                return actions
            metrics.REGISTRATIONS.labels(self.resource_name, "failed").inc()
            attempt = self.registration.attempt
            log = logger.warning if attempt in (1, 10) or attempt % 100 == 0 else logger.debug
            log(
                "registration failed: {error}; retrying (attempt {attempt}) in {delay:.2f}s",
                error=_describe_error(exc),
                attempt=attempt,
                delay=_delay(actions),
                resource=self.resource_name,
                kubelet=str(self.kubelet_socket),
            )
            return actions
        finally:
            channel.close()
        metrics.REGISTRATIONS.labels(self.resource_name, "ok").inc()
        logger.info("registered", resource=self.resource_name, endpoint=self.socket_name)
        return self.registration.handle(reg.Registered(kubelet))

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self.device_list.end_streams()
        await self.device_list.wait_streams_ended()
        server.close()
        with anyio.move_on_after(FLUSH_TIMEOUT):
            await server.wait_closed()
        if self._bound is not None:
            path, identity = self._bound
            if identity is not None and file_identity(path) == identity:
                with contextlib.suppress(OSError):
                    path.unlink()
        self._bound = None


def _delay(actions: list[reg.Action]) -> float:
    return next((a.delay for a in actions if isinstance(a, reg.Wait)), 0.0)


def _remove_stale(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        raise OSError(errno.EISDIR, f"{path} is a directory; remove it so Spookd can bind")
    if not stat.S_ISSOCK(mode):
        logger.warning("removing a non-socket file in the place of the plugin socket", path=str(path))
    path.unlink(missing_ok=True)


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
