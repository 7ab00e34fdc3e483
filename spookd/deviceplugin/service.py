"""The DevicePlugin gRPC handlers of one resource (SPEC §5)."""

from __future__ import annotations

import operator
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import grpclib.const
import grpclib.server
from grpclib.exceptions import GRPCError

from spookd._proto import v1beta1 as api
from spookd._proto.upb.v1beta1 import api_pb2 as pb
from spookd.allocation import container_env, host_devices, preferred_allocation, seat_offset
from spookd.claims import ClaimRefused, Claims
from spookd.config.model import Device
from spookd.deviceplugin import convert
from spookd.deviceplugin.snapshots import PreEncoded, Stream
from spookd.observe import metrics

#: Client input echoed in an error message is cut to this many characters: a client
#: that sent a huge ID must still be able to read the answer (gRPC metadata limits).
ECHO_MAX = 80


class ServedDevices(Protocol):
    """What the handlers need of the devices a server serves."""

    resource_name: str
    blocked: set[str]
    #: seats per instance ID, for devices with more than one
    capacities: dict[str, int]

    def get(self, device_id: str) -> Device | None:
        """The device this kubelet device ID (a seat) names, if served."""

    def subscribe(self, epoch: int) -> Stream:
        """A new ListAndWatch stream."""

    def sent(self, stream: Stream, version: int) -> None:
        """A stream sent a snapshot."""

    def unsubscribe(self, stream: Stream) -> None:
        """A stream ended."""


def _shown(device_id: str) -> str:
    if len(device_id) <= ECHO_MAX:
        return repr(device_id)
    return f"{device_id[:ECHO_MAX]!r}… ({len(device_id)} characters)"


#: The largest message a client may send (gRPC's own default, which the kubelet's client
#: keeps): grpclib alone reads a message of any announced length into memory.
MAX_MESSAGE = 4 * 1024 * 1024


class BoundedStream(grpclib.server.Stream):  # type: ignore[type-arg]
    """grpclib's server stream, refusing oversized, compressed and malformed messages with a status.

    grpclib reads as many bytes as a message's prefix announces (up to 4 GiB) before decoding,
    and answers a message that fails to decode with UNKNOWN and a logged traceback.
    """

    async def recv_message(self) -> Any:
        raw = self._stream
        prefix = await raw.recv_data(5)
        if not prefix:
            return None
        if len(prefix) < 5:
            raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, "message prefix cut short")
        compressed, length = struct.unpack(">?I", prefix)
        if compressed:
            raise GRPCError(grpclib.const.Status.UNIMPLEMENTED, "compressed messages are not accepted")
        if length > MAX_MESSAGE:
            raise GRPCError(
                grpclib.const.Status.RESOURCE_EXHAUSTED,
                f"a message of {length} bytes is larger than the {MAX_MESSAGE} accepted",
            )
        try:
            data = await raw.recv_data(length)
        except AssertionError:  # grpclib's Buffer: the stream ended inside the message
            raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, "message cut short") from None
        try:
            message = self._codec.decode(data, self._recv_type)
        except Exception:
            raise GRPCError(
                grpclib.const.Status.INVALID_ARGUMENT,
                f"malformed {self._recv_type.__name__} ({length} bytes)",
            ) from None
        (message,) = await self._dispatch.recv_message(message)
        self._messages_received += 1
        raw.connection.messages_received += 1
        raw.connection.last_message_received = time.monotonic()
        return message

    async def send_answer(self, answer: PreEncoded) -> None:
        """A unary answer: headers, the encoded message and OK trailers, in one write.

        grpclib sends them as three writes, each through h2's header encoding of str
        headers; the Go client then wakes three times for one answer. An answer that
        does not fit one DATA frame of the peer's window goes grpclib's own way.
        """
        raw = self._stream
        connection = raw._h2_connection
        payload = struct.pack(">?I", False, len(answer.data)) + answer.data
        if (
            self._send_initial_metadata_done
            or not raw.connection.write_ready.is_set()
            or raw.id not in connection.streams
            or len(payload)
            > min(connection.local_flow_control_window(raw.id), connection.max_outbound_frame_size)
        ):
            await self.send_message(answer)
            return
        connection.send_headers(
            raw.id, [(b":status", b"200"), (b"content-type", self._content_type.encode())]
        )
        connection.send_data(raw.id, payload)
        connection.send_headers(raw.id, _OK_TRAILERS, end_stream=True)
        raw._transport.write(connection.data_to_send())
        self._send_initial_metadata_done = self._send_message_done = True
        self._send_trailing_metadata_done = True
        self._messages_sent += 1
        raw.data_sent += len(payload)
        raw.connection.messages_sent += 1
        raw.connection.data_sent += len(payload)
        raw.connection.last_message_sent = time.monotonic()
        raw.connection.data_send_process()


_OK_TRAILERS = [(b"grpc-status", b"0")]


def _bounded(handler: grpclib.const.Handler) -> grpclib.const.Handler:
    async def run(stream: grpclib.server.Stream) -> None:  # type: ignore[type-arg]
        # grpclib builds the stream itself and offers no hook for its class
        stream.__class__ = BoundedStream
        await handler.func(stream)

    return handler._replace(func=run)


#: Encoded Allocate answers kept per server: the kubelet asks for the same device sets again
#: (pod restarts, re-admission after its own restart), and an answer is a pure function of
#: the devices it names.
ANSWERS_KEPT = 64


class Answer(PreEncoded):
    """An encoded Allocate answer, and the devices it was computed from."""

    __slots__ = ("device_ids", "devices")

    def __init__(self, data: bytes, device_ids: tuple[str, ...], devices: tuple[Device, ...]) -> None:
        self.data = data
        self.device_ids = device_ids
        self.devices = devices

    def still_served(self, served: ServedDevices) -> bool:
        """True while every device of the answer is still served as it was (same object)."""
        return all(map(operator.is_, map(served.get, self.device_ids), self.devices))


class DevicePluginService(api.DevicePluginBase):
    """The DevicePlugin service: options, ListAndWatch, Allocate, preferred allocation."""

    def __init__(self, devices: ServedDevices, claims: Claims | None, epoch: Callable[[], int]) -> None:
        self._devices = devices
        self._claims = claims
        self._epoch = epoch
        self._resource = devices.resource_name
        #: encoded answers by requested IDs, oldest first
        self._answers: dict[tuple[tuple[str, ...], ...], Answer] = {}
        self._allocations = metrics.ALLOCATIONS.labels(self._resource)
        self._latency = metrics.ALLOCATE_LATENCY.labels(self._resource)
        #: nodes sharing a device prefer different seats of it (spookd.allocation)
        self._first_seat = 0 if claims is None else seat_offset(claims.node_name)

    def lookup(self, device_ids: Sequence[str]) -> list[Device]:
        """The devices for an Allocate request; INVALID_ARGUMENT for unknown or repeated IDs."""
        seen: set[str] = set()
        devices = []
        for device_id in device_ids:
            if device_id in seen:
                raise self._refused(f"device ID {_shown(device_id)} is requested twice for {self._resource}")
            device = self._devices.get(device_id)
            if device is None:
                raise self._refused(f"unknown device ID {_shown(device_id)} for {self._resource}")
            seen.add(device_id)
            devices.append(device)
        return devices

    def _refused(self, message: str) -> GRPCError:
        metrics.ALLOCATE_ERRORS.labels(self._resource).inc()
        return GRPCError(grpclib.const.Status.INVALID_ARGUMENT, message)

    async def get_device_plugin_options(self, message: api.Empty) -> api.DevicePluginOptions:
        return convert.PLUGIN_OPTIONS

    async def get_preferred_allocation(
        self, message: api.PreferredAllocationRequest
    ) -> api.PreferredAllocationResponse:
        return convert.preferred_response(
            # devices another node holds go last: the kubelet should not pick them;
            # seats spread over distinct devices first
            preferred_allocation(
                available,
                must,
                size,
                avoid=self._devices.blocked,
                capacity=self._devices.capacities,
                first_seat=self._first_seat,
            )
            for available, must, size in convert.preferred_requests(message)
        )

    async def _allocate(self, stream: grpclib.server.Stream[pb.AllocateRequest, pb.AllocateResponse]) -> None:
        # Allocate is the call a pod start waits on: its messages are protobuf's own
        # (upb, in C) rather than betterproto2's, which encode field by field in Python.
        request = await stream.recv_message()
        assert request is not None
        started = time.perf_counter()
        requested = tuple(tuple(container.devices_ids) for container in request.container_requests)
        answer = self._answers.get(requested)
        if answer is None or not answer.still_served(self._devices):
            answer = self._answer(requested)
        if self._claims is not None:
            await self._claim(requested)
        self._allocations.inc(len(answer.devices))
        self._latency.observe(time.perf_counter() - started)
        assert isinstance(stream, BoundedStream)
        await stream.send_answer(answer)

    def _answer(self, requested: tuple[tuple[str, ...], ...]) -> Answer:
        """The encoded answer to ``requested``, kept for the next identical request."""
        resource = self._resource
        responses = []
        served: list[Device] = []
        for device_ids in requested:
            devices = self.lookup(device_ids)
            served += devices
            responses.append(
                convert.container_response(container_env(resource, devices), host_devices(devices))
            )
        answer = Answer(
            pb.AllocateResponse(container_responses=responses).SerializeToString(),
            tuple(i for ids in requested for i in ids),
            tuple(served),
        )
        if len(self._answers) >= ANSWERS_KEPT:
            del self._answers[next(iter(self._answers))]
        self._answers[requested] = answer
        return answer

    async def _claim(self, requested: tuple[tuple[str, ...], ...]) -> None:
        assert self._claims is not None
        for device_ids in requested:
            try:
                await self._claims.claim(self._resource, list(device_ids))
            except ClaimRefused as exc:
                metrics.ALLOCATE_ERRORS.labels(self._resource).inc()
                raise GRPCError(grpclib.const.Status.FAILED_PRECONDITION, str(exc)) from None

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
        watcher = self._devices.subscribe(self._epoch())
        try:
            while True:
                offer = await watcher.mailbox.get()
                if offer is None:
                    return
                version, encoded = offer
                await stream.send_message(encoded)  # type: ignore[arg-type]
                self._devices.sent(watcher, version)
        finally:
            self._devices.unsubscribe(watcher)

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
        return {path: _bounded(handler) for path, handler in mapping.items()}
