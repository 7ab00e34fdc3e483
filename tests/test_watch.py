"""The shared LIST + WATCH (spookd.kube.watch) on kubernetes-asyncio's own event decoding.

Recorded watch lines go through kubernetes-asyncio's ``Watch.unmarshal_event``, so
the shapes (typed objects, raw dicts, bookmarks, ERROR events raised as
ApiException) are exactly what a real API server's answers become.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from kubernetes_asyncio.watch import Watch

from spookd.kube.client import Backoff
from spookd.kube.watch import Changed, Listed, ListWatch, WatchEvent

pytestmark = pytest.mark.anyio


def lease(rv: str, holder: str = "node-a") -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "spookd-x", "namespace": "ns", "resourceVersion": rv},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15},
    }


def line(kind: str, obj: dict[str, Any]) -> str:
    return json.dumps({"type": kind, "object": obj})


GONE = line(
    "ERROR", {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}
)


class Recorded:
    """A list call and a Watch factory replaying scripted answers; records what was asked."""

    def __init__(self, watches: list[list[str]]) -> None:
        self.watches = watches
        self.lists = 0
        self.watched_from: list[str | None] = []

    async def list_call(self, *_: Any, **__: Any) -> Any:
        self.lists += 1
        rv = str(100 * self.lists)
        return SimpleNamespace(metadata=SimpleNamespace(resource_version=rv), items=[f"item-{rv}"])

    def watch(self) -> Any:
        recorded = self

        class ScriptedWatch:
            def __init__(self) -> None:
                self._decoder = Watch()

            def stream(self, *_: Any, resource_version: str | None = None, **__: Any) -> ScriptedWatch:
                recorded.watched_from.append(resource_version)
                self._lines = recorded.watches.pop(0) if recorded.watches else []
                return self

            async def __aenter__(self) -> AsyncIterator[dict[str, Any]]:
                return self._events()

            async def __aexit__(self, *_: object) -> None:
                await self._decoder.close()

            async def _events(self) -> AsyncIterator[dict[str, Any]]:
                await anyio.lowlevel.checkpoint()  # a real stream reads a socket: a point to cancel at
                for raw in self._lines:
                    yield self._decoder.unmarshal_event(raw, "V1Lease")

        return ScriptedWatch()


async def take(list_watch: ListWatch, n: int) -> list[WatchEvent]:
    events: list[WatchEvent] = []
    async for event in list_watch.events():
        events.append(event)
        if len(events) == n:
            break
    return events


def make(recorded: Recorded) -> ListWatch:
    return ListWatch(
        recorded.list_call,
        "ns",
        what="Leases",
        watch_factory=recorded.watch,
        backoff=Backoff(first=0.001, cap=0.005),
        label_selector="app.kubernetes.io/managed-by=spookd",
    )


async def test_410_gone_lists_again_and_a_server_ended_watch_resumes_without_a_list() -> None:
    recorded = Recorded(
        [
            [line("ADDED", lease("101")), GONE],
            [
                line(
                    "BOOKMARK",
                    {
                        "kind": "Lease",
                        "apiVersion": "coordination.k8s.io/v1",
                        "metadata": {"resourceVersion": "250"},
                    },
                )
            ],
            [line("MODIFIED", lease("260", holder="node-b"))],
        ]
    )
    events = await take(make(recorded), 4)
    assert isinstance(events[0], Listed)
    assert events[0].resource_version == "100"
    assert isinstance(events[1], Changed)
    assert events[1].obj.spec.holder_identity == "node-a"
    assert isinstance(events[2], Listed)
    assert events[2].resource_version == "200"
    assert isinstance(events[3], Changed)
    assert events[3].obj.spec.holder_identity == "node-b"
    # first watch from the list, second from the relist after 410, third from the bookmark
    assert recorded.watched_from[:3] == ["100", "200", "250"]
    assert recorded.lists == 2


async def test_a_malformed_answer_lists_again_and_ends_nothing() -> None:
    recorded = Recorded([['{"neither": "type nor object"}'], [line("ADDED", lease("301"))]])
    events = await take(make(recorded), 3)
    assert isinstance(events[0], Listed)
    assert isinstance(events[1], Listed), "the malformed line did not start a new LIST"
    assert isinstance(events[2], Changed)
    assert recorded.lists == 2


async def test_an_unknown_event_type_lists_again() -> None:
    recorded = Recorded([[line("SURPRISE", lease("101"))], [line("ADDED", lease("201"))]])
    events = await take(make(recorded), 3)
    assert [type(e).__name__ for e in events] == ["Listed", "Listed", "Changed"]


async def test_watches_that_end_at_once_are_backed_off_not_repeated_hot() -> None:
    recorded = Recorded([])
    watched_from = recorded.watched_from

    class EndsAtOnce:
        """A watch the server ends at once, without an event (no decoding: it costs ~nothing)."""

        def stream(self, *_: Any, resource_version: str | None = None, **__: Any) -> EndsAtOnce:
            watched_from.append(resource_version)
            return self

        async def __aenter__(self) -> AsyncIterator[dict[str, Any]]:
            return self._events()

        async def __aexit__(self, *_: object) -> None:
            pass

        async def _events(self) -> AsyncIterator[dict[str, Any]]:
            await anyio.lowlevel.checkpoint()
            return
            yield

    list_watch = make(recorded)
    list_watch.watch_factory = EndsAtOnce  # type: ignore[assignment]
    list_watch.backoff = Backoff(first=0.02, cap=0.02)  # 10-20 ms between attempts

    async def run() -> None:
        async for _ in list_watch.events():
            pass

    started = time.monotonic()
    with anyio.move_on_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            while len(recorded.watched_from) < 6:
                await anyio.sleep(0.001)
            tg.cancel_scope.cancel()
    elapsed = time.monotonic() - started
    # five pauses of at least 10 ms between six watches; without them, six watches take < 1 ms
    assert elapsed >= 0.05, f"6 watches in {elapsed * 1000:.1f} ms: no backoff between them"
