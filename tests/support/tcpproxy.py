"""A TCP relay in front of the API server that a test can cut, to cut one node off (stdlib only)."""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from typing import Self


class TcpProxy:
    """Relays 127.0.0.1:<port> to ``upstream``; a test can cut it, or lose every answer.

    ``cut()`` resets every connection and refuses new ones. ``mute()`` keeps relaying
    requests but drops every byte the server sends back, as a path that loses only the
    answers does: the server acts on a request whose client never learns it did.
    ``restore()`` ends either (connections muted meanwhile are reset: their streams
    lost bytes).
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._muted = False
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def cut(self) -> None:
        """From now on: every connection reset, every new one closed at once."""
        with self._lock:
            self._cut = True
            for sock in self._open:
                _reset(sock)
            self._open.clear()

    def mute(self) -> None:
        """From now on: requests still reach the server, its answers are dropped."""
        with self._lock:
            self._muted = True

    def restore(self) -> None:
        """Relay again; connections that lost answers are reset."""
        with self._lock:
            if self._muted:
                for sock in self._open:
                    _reset(sock)
                self._open.clear()
            self._cut = False
            self._muted = False

    def close(self) -> None:
        """Stop relaying for good."""
        self._closed = True
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                cut = self._cut
            if cut:
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _reset(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._open.update((client, server))
            for source, target, answers in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pump, args=(source, target, answers), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, answers: bool) -> None:
        try:
            while data := source.recv(65536):
                if answers and self._muted:
                    continue
                target.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(source)
                self._open.discard(target)
            # shutdown wakes the other direction's thread; close releases the descriptor
            # (a closed socket object answers that thread with EBADF, never a reused fd).
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def _reset(sock: socket.socket) -> None:
    # SO_LINGER 0: close with a RST, as a broken network path looks to the client.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    # shutdown wakes the relay thread blocked in recv; close sends the RST.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
