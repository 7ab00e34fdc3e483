"""One call over a fresh grpclib Channel, with grpclib's hang-up race named for what it is."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def hung_up_as_reset(call: Awaitable[T]) -> T:
    """Await ``call``; a peer that hung up between the connect and the request is a reset.

    grpclib 0.4 opens the connection, then creates the HTTP/2 stream on it; when the
    peer closes the connection in between (a kubelet restarting, a socket held by
    something that accepts and closes), the connection has already dropped its
    transport and the call fails with ``AttributeError: 'Connection' object has no
    attribute '_transport'`` instead of a connection error. Callers treat it like any
    other connection failure (retry, keep the last state), never as a crash.
    """
    try:
        return await call
    except AttributeError as exc:
        if "_transport" not in str(exc):
            raise
        raise ConnectionResetError("the peer closed the connection before the call was sent") from exc
