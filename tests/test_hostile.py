"""Hostile clients on a running Spookd's plugin socket: each is answered or dropped, and the kubelet is
still served afterwards (a real Allocate through the kubelet's device manager proves it).

Spookd runs as a process (`spookd run`), registered with the real device manager; the hostile client
is this test, on the same Unix socket the kubelet uses. At the end, the other way round: peers Spookd
calls (kubelet.sock, PodResources) that accept a connection and close it at once.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import grpclib.const
import grpclib.encoding.base
import pytest
from conftest import SpookdProcess
from grpclib.client import Channel
from grpclib.exceptions import GRPCError, StreamTerminatedError
from kubelet_double import running_kubelet
from support.nodeharness import NodeHarness
from test_plugin import WALKTHROUGH, daemon
from test_plugin import accepted as accepted_config

from spookd.kube.podresources import PodResourcesReader

WIDGET = "example.com/widget"
SOCKET = "spookd-examplecom_widget.sock"
CONFIG = """
deviceMapping:
  - hosts: [minikube]
    devices:
      - {resourceName: example.com/widget, instanceID: "0001", env: {IP: 192.168.0.200}}
      - {resourceName: example.com/widget, instanceID: "0002", env: {IP: 192.168.0.201}}
"""
#: Not a protobuf message: a length-delimited field 1 whose length varint never ends.
MALFORMED = b"\n\xff"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class RawCodec(grpclib.encoding.base.CodecBase):
    """Sends and receives bytes as they are, so a test can put anything on the wire."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return data


@pytest.fixture
def served(node: NodeHarness, spookd: SpookdProcess) -> SpookdProcess:
    """Spookd registered with the device manager, serving two widgets."""
    spookd.write(CONFIG)
    spookd.start()
    node.wait_for(lambda r: r.is_registered(WIDGET) and r.capacity(WIDGET) == 2, timeout=30)
    return spookd


def assert_still_serving(node: NodeHarness, spookd: SpookdProcess, pod: str) -> None:
    """A pod is admitted through the real device manager (which calls Allocate) and gets its env."""
    assert spookd.process is not None
    assert spookd.process.poll() is None, spookd.log_text()
    result = node.admit(pod, {"main": {WIDGET: 1}}).raise_for_error()
    env = result.container("main").envs
    assert env["EXAMPLECOM_WIDGET_IP"] in ("192.168.0.200", "192.168.0.201")
    node.remove(pod)


def no_tracebacks(spookd: SpookdProcess) -> list[str]:
    """Error-level log lines (grpclib logs a traceback for every handler that raised)."""
    return [str(r.get("message")) for r in spookd.records() if r.get("level") in ("ERROR", "CRITICAL")]


@contextlib.contextmanager
def raw_connection(path: Path) -> Iterator[socket.socket]:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(10)
    conn.connect(str(path))
    try:
        yield conn
    finally:
        conn.close()


def read_until_closed(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket timeout: it did not)."""
    out = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := conn.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(os.urandom(64 * 1024), id="random-bytes"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http1-request"),
        pytest.param(H2_PREFACE + b"\x00\x00\x04\x07\x00\x00\x00\x00\x00" + b"\xff" * 4, id="h2-bad-frame"),
    ],
)
def test_garbage_on_the_socket_is_dropped_and_the_kubelet_still_served(
    node: NodeHarness, served: SpookdProcess, garbage: bytes
) -> None:
    with raw_connection(served.plugin_dir / SOCKET) as conn:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.sendall(garbage)
        answer = read_until_closed(conn)
    assert len(answer) < 1024  # at most a SETTINGS frame and a GOAWAY
    assert_still_serving(node, served, "after-garbage")


def test_hundreds_of_idle_connections_neither_starve_the_kubelet_nor_leak(
    node: NodeHarness, served: SpookdProcess
) -> None:
    before = served.open_fds()
    path = served.plugin_dir / SOCKET
    conns = []
    try:
        for i in range(300):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conns.append(conn)
            conn.connect(str(path))
            if i % 2:  # half of them open HTTP/2 and then say nothing more
                conn.sendall(H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        assert_still_serving(node, served, "among-idle")
    finally:
        for conn in conns:
            conn.close()
    # every connection the clients closed is closed on Spookd's side too
    anyio.run(_wait_fds, served, before + 5)


async def _wait_fds(spookd: SpookdProcess, at_most: int) -> None:
    with anyio.fail_after(15):
        while spookd.open_fds() > at_most:
            await anyio.sleep(0.1)


async def _call(path: Path, method: str, body: bytes, cardinality: grpclib.const.Cardinality) -> list[bytes]:
    channel = Channel(path=str(path), codec=RawCodec())
    try:
        with anyio.fail_after(10):
            async with channel.request(method, cardinality, bytes, bytes) as stream:
                await stream.send_message(body, end=True)
                return [message async for message in stream]
    finally:
        channel.close()


@pytest.mark.parametrize(
    ("method", "cardinality"),
    [
        ("/v1beta1.DevicePlugin/Allocate", grpclib.const.Cardinality.UNARY_UNARY),
        ("/v1beta1.DevicePlugin/ListAndWatch", grpclib.const.Cardinality.UNARY_STREAM),
        ("/v1beta1.DevicePlugin/GetPreferredAllocation", grpclib.const.Cardinality.UNARY_UNARY),
        ("/v1beta1.DevicePlugin/PreStartContainer", grpclib.const.Cardinality.UNARY_UNARY),
    ],
    ids=lambda v: v.rsplit("/", 1)[-1] if isinstance(v, str) else "",
)
def test_malformed_protobuf_is_invalid_argument_and_logs_no_traceback(
    node: NodeHarness, served: SpookdProcess, method: str, cardinality: grpclib.const.Cardinality
) -> None:
    with pytest.raises(GRPCError) as info:
        anyio.run(_call, served.plugin_dir / SOCKET, method, MALFORMED, cardinality)
    assert info.value.status is grpclib.const.Status.INVALID_ARGUMENT
    assert info.value.message is not None
    assert len(info.value.message) < 200
    assert "malformed" in info.value.message
    assert_still_serving(node, served, "after-malformed")
    assert no_tracebacks(served) == []


async def _announce(path: Path, announced: int, sent: bytes) -> None:
    """An Allocate whose prefix announces ``announced`` bytes, of which only ``sent`` follow."""
    channel = Channel(path=str(path), codec=RawCodec())
    try:
        with anyio.fail_after(10):
            async with channel.request(
                "/v1beta1.DevicePlugin/Allocate", grpclib.const.Cardinality.UNARY_UNARY, bytes, bytes
            ) as stream:
                await stream.send_request()
                # below grpclib's send_message, which would announce the true length
                await stream._stream.send_data(struct.pack(">?I", False, announced) + sent)
                await stream.recv_message()
    finally:
        channel.close()


def test_an_oversized_message_is_refused_from_its_prefix_without_reading_it(
    node: NodeHarness, served: SpookdProcess
) -> None:
    # 1 GiB announced, 16 KiB sent: a server that waits for the rest (or buffers it) never answers
    with pytest.raises((GRPCError, StreamTerminatedError)) as info:
        anyio.run(_announce, served.plugin_dir / SOCKET, 1 << 30, b"\x0a" * 16384)
    assert isinstance(info.value, GRPCError), info.value
    assert info.value.status is grpclib.const.Status.RESOURCE_EXHAUSTED
    assert info.value.message is not None
    assert "1073741824 bytes" in info.value.message
    assert_still_serving(node, served, "after-oversized")
    assert no_tracebacks(served) == []


def test_a_message_just_under_the_limit_is_still_read(node: NodeHarness, served: SpookdProcess) -> None:
    # the bound refuses only what gRPC itself would: 4 MiB of unknown IDs is an answered refusal
    from spookd._proto.upb.v1beta1 import api_pb2 as pb

    ids = [f"bogus-{i:07d}" for i in range(4 * 1024 * 1024 // 16 - 1000)]
    body = pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=ids)])
    data = body.SerializeToString()
    assert len(data) < 4 * 1024 * 1024
    with pytest.raises(GRPCError) as info:
        anyio.run(
            _call, served.plugin_dir / SOCKET, "/v1beta1.DevicePlugin/Allocate", data,
            grpclib.const.Cardinality.UNARY_UNARY,
        )  # fmt: skip
    assert info.value.status is grpclib.const.Status.INVALID_ARGUMENT
    assert info.value.message is not None
    assert "unknown device ID 'bogus-0000000'" in info.value.message
    assert_still_serving(node, served, "after-large")


@contextlib.contextmanager
def hanging_up(path: Path) -> Iterator[list[int]]:
    """A Unix socket at ``path`` that accepts every connection and closes it at once.

    What a peer that is going away looks like (a kubelet restarting, a PodResources
    server shutting down); the list counts the connections accepted.
    """
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(64)
    accepted: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield accepted
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(timeout=5)
        path.unlink(missing_ok=True)


@pytest.mark.anyio
async def test_a_pod_resources_server_that_hangs_up_is_a_failed_read_never_a_crash(tmp_path: Path) -> None:
    reader = PodResourcesReader(str(tmp_path / "podres.sock"), timeout=2.0)
    with hanging_up(tmp_path / "podres.sock") as accepted:
        results = [await reader.in_use() for _ in range(100)]
    assert len(accepted) >= 100
    assert results == [None] * 100


@pytest.mark.anyio
async def test_a_kubelet_socket_that_hangs_up_is_a_failed_registration_retried(plugin_dir: Path) -> None:
    async with daemon(plugin_dir) as spookd:
        with hanging_up(plugin_dir / "kubelet.sock") as accepted:
            await spookd.push(accepted_config(WALKTHROUGH))
            with anyio.fail_after(10):
                while len(accepted) < 4:  # the first try and its retries, each hung up on
                    await anyio.sleep(0.05)
        assert not spookd.state.ready()[0]
        async with running_kubelet(plugin_dir) as kubelet:
            await kubelet.wait_for(lambda: len(kubelet.capacity()) == 2, timeout=10)
