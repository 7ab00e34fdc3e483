"""A one-slot mailbox where the newest value wins (configurations, snapshots, blocked devices),
and a gate that loops sleep behind until there is work."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

_EMPTY = object()


class Latest(Generic[T]):
    """``put`` replaces what is waiting, so a slow reader only ever sees the newest value."""

    def __init__(self) -> None:
        self._value: T | object = _EMPTY
        self._ready = asyncio.Event()

    @property
    def pending(self) -> bool:
        """A value waits to be taken."""
        return self._value is not _EMPTY

    def put(self, value: T) -> None:
        """Leave ``value`` for the reader, dropping any older one it has not taken."""
        self._value = value
        self._ready.set()

    async def get(self) -> T:
        """Wait for a value and take it."""
        await self._ready.wait()
        self._ready.clear()
        value, self._value = self._value, _EMPTY
        assert value is not _EMPTY
        return value  # type: ignore[return-value]


class Gate:
    """Open while ``is_open()`` holds; ``wait`` sleeps until then, without a timer."""

    def __init__(self, is_open: Callable[[], bool]) -> None:
        self._is_open = is_open
        self._waiters: list[asyncio.Event] = []

    def check(self) -> None:
        """The condition may have changed: wake the waiters if it holds now."""
        if self._is_open():
            for waiter in self._waiters:
                waiter.set()
            self._waiters.clear()

    async def wait(self) -> None:
        """Return at once when open; otherwise sleep until a ``check`` finds it open."""
        if not self._is_open():
            waiter = asyncio.Event()
            self._waiters.append(waiter)
            await waiter.wait()
