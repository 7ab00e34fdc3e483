"""The devices one resource serves, and the ListAndWatch snapshots that carry them (SPEC §5).

Each change is encoded once and offered to every open stream through a one-slot
mailbox, so a slow stream only ever sends the newest snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
from grpclib.encoding.proto import ProtoCodec
from loguru import logger

from spookd._proto import v1beta1 as api
from spookd.config.model import HEALTHY, UNHEALTHY, Device
from spookd.deviceplugin import convert
from spookd.mailbox import Latest
from spookd.observe import metrics

#: How long stopping waits for streams to deliver their last message.
FLUSH_TIMEOUT = 1.0


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


#: A snapshot and its version, or None: the stream must end.
Offer = tuple[int, PreEncoded] | None


class Stream:
    """One open ListAndWatch stream: the newest snapshot waits in its mailbox."""

    def __init__(self, epoch: int) -> None:
        #: the bind of the server this stream arrived on
        self.epoch = epoch
        self.mailbox: Latest[Offer] = Latest()
        self.sent_version = -1


class DeviceList:
    """The devices of one resource, their health, and the streams that watch them."""

    def __init__(
        self,
        resource_name: str,
        devices: Sequence[Device],
        blocked: set[str],
        on_streams_changed: Callable[[Stream, bool], None],
    ) -> None:
        self.resource_name = resource_name
        #: devices another node holds: reported Unhealthy here
        self.blocked = set(blocked)
        self._on_streams_changed = on_streams_changed
        #: by instance ID, as configured
        self._devices: dict[str, Device] = {}
        #: by kubelet device ID: one per seat of each device (spookd.naming.seat_ids)
        self._seats: dict[str, Device] = {}
        #: seats per instance ID, for devices with more than one
        self.capacities: dict[str, int] = {}
        #: by instance ID: every seat of a device has the device's health
        self._health: dict[str, str] = {}
        self._version = 0
        self._encoded = PreEncoded(api.ListAndWatchResponse())
        self._streams: set[Stream] = set()
        self._progress = anyio.Event()
        self.update(devices)

    @property
    def devices(self) -> dict[str, Device]:
        """The devices served now, by instance ID."""
        return dict(self._devices)

    def get(self, device_id: str) -> Device | None:
        """The device a kubelet device ID (a seat) names, if served."""
        return self._seats.get(device_id)

    @property
    def streaming(self) -> bool:
        """True while at least one ListAndWatch stream is open."""
        return bool(self._streams)

    def update(self, devices: Sequence[Device], health: Mapping[str, str] | None = None) -> None:
        """Serve ``devices`` from now on and push one snapshot to every stream.

        Without ``health``, a device without a health check is Healthy; one with a
        check keeps what its probes said, and starts Unhealthy until its first probe.
        """
        self._devices = {d.instance_id: d for d in devices}
        self._seats = {seat: d for d in devices for seat in d.seats()}
        self.capacities = {d.instance_id: d.capacity for d in devices if d.capacity > 1}
        if health is None:
            health = {
                d.instance_id: self._health.get(d.instance_id, UNHEALTHY) if d.health_check else HEALTHY
                for d in devices
            }
        self._health = dict(health)
        self._publish()

    def set_blocked(self, device_ids: set[str]) -> None:
        """Devices (seats) another node holds: reported Unhealthy here until released."""
        if device_ids != self.blocked:
            self.blocked = set(device_ids)
            self._publish()

    def set_health(self, device_id: str, health: str) -> None:
        """A probe changed one device's health (all its seats): push a snapshot if it really changed."""
        if device_id in self._devices and self._health.get(device_id) != health:
            self._health[device_id] = health
            self._publish()

    def _effective_health(self) -> dict[str, str]:
        """Health by kubelet device ID: each seat has its device's, unless held elsewhere."""
        if self.capacities:
            health = {seat: self._health[d.instance_id] for seat, d in self._seats.items()}
        else:
            health = self._health
        if not self.blocked:
            return health
        return {i: UNHEALTHY if i in self.blocked else h for i, h in health.items()}

    def _publish(self) -> None:
        self._version += 1
        health = self._effective_health()
        self._encoded = PreEncoded(convert.snapshot(health))
        for stream in self._streams:
            stream.mailbox.put((self._version, self._encoded))
        counts = {HEALTHY: 0, UNHEALTHY: 0}
        for value in health.values():
            counts[value] += 1
        for value, count in counts.items():
            metrics.DEVICES.labels(self.resource_name, value).set(count)
        logger.info(
            "devices reported",
            resource=self.resource_name,
            count=len(health),
            unhealthy=counts[UNHEALTHY],
            streams=len(self._streams),
        )

    # -- streams -----------------------------------------------------------

    def subscribe(self, epoch: int) -> Stream:
        """A new stream: it gets the current snapshot at once, then every change."""
        stream = Stream(epoch)
        stream.mailbox.put((self._version, self._encoded))
        self._streams.add(stream)
        self._on_streams_changed(stream, True)
        return stream

    def sent(self, stream: Stream, version: int) -> None:
        """A stream sent the snapshot of ``version``."""
        stream.sent_version = version
        self._wake_waiters()

    def unsubscribe(self, stream: Stream) -> None:
        """A stream ended."""
        self._streams.discard(stream)
        self._wake_waiters()
        self._on_streams_changed(stream, False)

    def end_streams(self) -> None:
        """Tell every stream to end."""
        for stream in self._streams:
            stream.mailbox.put(None)

    def _wake_waiters(self) -> None:
        self._progress.set()
        self._progress = anyio.Event()

    async def _wait_streams(self, done: Callable[[], bool]) -> None:
        with anyio.move_on_after(FLUSH_TIMEOUT):
            while not done():
                await self._progress.wait()

    async def wait_streams_ended(self) -> None:
        """Wait (at most FLUSH_TIMEOUT) until no stream is open."""
        await self._wait_streams(lambda: not self._streams)

    async def withdraw(self) -> None:
        """Report no devices, so the kubelet drops the capacity, and wait until sent."""
        self.update([])
        await self._wait_streams(lambda: all(s.sent_version >= self._version for s in self._streams))
