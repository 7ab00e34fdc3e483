"""A small Python stand-in for the kubelet's device manager, for fast unit tests.

It serves Registration on ``<plugin-dir>/kubelet.sock``, dials back to each plugin
after Register (as the kubelet does, asynchronously), consumes ListAndWatch and can
call Allocate and GetPreferredAllocation. Conformance is proven against the real
device manager (tests/go, tests/support/nodeharness.py); this double only keeps
unit tests fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import grpclib.server
from grpclib.client import Channel

from spookd._proto import v1beta1 as api


@dataclass
class PluginView:
    """What the double knows of one registered resource."""

    resource_name: str
    endpoint: str
    options: api.DevicePluginOptions | None = None
    devices: dict[str, str] = field(default_factory=dict)
    snapshots: int = 0
    streaming: bool = False


class _Registration(api.RegistrationBase):
    def __init__(self, kubelet: KubeletDouble) -> None:
        self._kubelet = kubelet

    async def register(self, message: api.RegisterRequest) -> api.Empty:
        self._kubelet.on_register(message)
        return api.Empty()


class KubeletDouble:
    """Registration server plus ListAndWatch consumer, owned by a task group."""

    def __init__(self, plugin_dir: Path, tg: anyio.abc.TaskGroup) -> None:
        self.plugin_dir = plugin_dir
        self.socket = plugin_dir / "kubelet.sock"
        self.plugins: dict[str, PluginView] = {}
        self.registrations: list[api.RegisterRequest] = []
        self._tg = tg
        self._server: grpclib.server.Server | None = None
        self._streams: dict[str, anyio.CancelScope] = {}
        self._changed = asyncio.Event()

    async def start(self) -> None:
        """Listen on kubelet.sock."""
        self._server = grpclib.server.Server([_Registration(self)])
        await self._server.start(path=str(self.socket))

    async def stop(self) -> None:
        """Stop listening and drop every stream, like a kubelet that dies."""
        for scope in self._streams.values():
            scope.cancel()
        self._streams.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.socket.unlink(missing_ok=True)

    async def restart(self) -> None:
        """Die, delete every socket in the plugin directory, and start again."""
        await self.stop()
        for path in self.plugin_dir.iterdir():
            if path.is_socket():
                path.unlink()
        self.plugins.clear()
        await self.start()

    def on_register(self, message: api.RegisterRequest) -> None:
        self.registrations.append(message)
        if message.version != "v1beta1":
            raise grpclib.GRPCError(grpclib.const.Status.INVALID_ARGUMENT, "bad version")
        old = self._streams.pop(message.resource_name, None)
        if old is not None:
            old.cancel()
        view = PluginView(message.resource_name, message.endpoint, message.options)
        self.plugins[message.resource_name] = view
        scope = anyio.CancelScope()
        self._streams[message.resource_name] = scope
        self._tg.start_soon(self._consume, view, scope)
        self._touch()

    def drop_stream(self, resource_name: str) -> None:
        """Close the ListAndWatch stream of a resource from the kubelet's side."""
        self._streams.pop(resource_name).cancel()

    def _touch(self) -> None:
        self._changed.set()

    async def _consume(self, view: PluginView, scope: anyio.CancelScope) -> None:
        with scope:
            channel = Channel(path=str(self.plugin_dir / view.endpoint))
            try:
                stub = api.DevicePluginStub(channel)
                await stub.get_device_plugin_options(api.Empty())
                view.streaming = True
                async for response in stub.list_and_watch(api.Empty()):
                    view.devices = {d.id: d.health for d in response.devices}
                    view.snapshots += 1
                    self._touch()
            except (OSError, grpclib.exceptions.StreamTerminatedError, grpclib.GRPCError):
                pass
            finally:
                view.streaming = False
                channel.close()
                self._touch()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> float:
        """Wait until ``predicate()`` holds; return the seconds it took."""
        started = time.monotonic()
        with anyio.fail_after(timeout):
            while not predicate():
                self._changed.clear()
                with anyio.move_on_after(0.05):
                    await self._changed.wait()
        return time.monotonic() - started

    def capacity(self) -> dict[str, int]:
        """Devices per registered resource, as the double sees them."""
        return {name: len(view.devices) for name, view in self.plugins.items() if view.streaming}

    @contextlib.asynccontextmanager
    async def plugin(self, resource_name: str) -> AsyncIterator[api.DevicePluginStub]:
        """A client of the plugin serving ``resource_name``."""
        channel = Channel(path=str(self.plugin_dir / self.plugins[resource_name].endpoint))
        try:
            yield api.DevicePluginStub(channel)
        finally:
            channel.close()

    async def allocate(self, resource_name: str, *containers: list[str]) -> api.AllocateResponse:
        """Call Allocate with one container request per ``containers`` entry."""
        async with self.plugin(resource_name) as stub:
            return await stub.allocate(
                api.AllocateRequest(
                    container_requests=[api.ContainerAllocateRequest(devices_ids=c) for c in containers]
                )
            )


@contextlib.asynccontextmanager
async def running_kubelet(plugin_dir: Path) -> AsyncIterator[KubeletDouble]:
    """A started double whose tasks end with the context."""
    async with anyio.create_task_group() as tg:
        kubelet = KubeletDouble(plugin_dir, tg)
        await kubelet.start()
        try:
            yield kubelet
        finally:
            await kubelet.stop()
            tg.cancel_scope.cancel()
