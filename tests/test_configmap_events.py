"""The ConfigMap watch on the exact event shapes kubernetes-asyncio produces (fast, no API server).

The real API server (tests/test_configmap.py) rarely sends a bookmark within a test's
time; the shapes here come from kubernetes-asyncio's own event decoding.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.watch import Watch

from spookd.config.versions import Accepted
from spookd.sources import configmap as source

pytestmark = pytest.mark.anyio

CONFIG = 'deviceMapping:\n  - {hosts: [n], devices: [{resourceName: e.com/w, instanceID: "1"}]}\n'


def line(kind: str, obj: dict[str, Any]) -> str:
    return json.dumps({"type": kind, "object": obj})


LINES = [
    line(
        "ADDED",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cm", "namespace": "ns", "uid": "u-1", "resourceVersion": "5"},
            "data": {"config.yaml": CONFIG},
        },
    ),
    line("BOOKMARK", {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"resourceVersion": "9"}}),
]


class RecordedWatch:
    """kubernetes-asyncio's Watch decoding recorded lines instead of reading a socket."""

    def __init__(self) -> None:
        self._decoder = Watch()

    def stream(self, *_: Any, **__: Any) -> RecordedWatch:
        return self

    async def __aenter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._events()

    async def __aexit__(self, *_: object) -> None:
        await self._decoder.close()

    async def _events(self) -> AsyncIterator[dict[str, Any]]:
        for raw in LINES:
            yield self._decoder.unmarshal_event(raw, "V1ConfigMap")


async def test_bookmarks_move_the_resource_version_and_end_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source, "Watch", RecordedWatch)
    api = client.ApiClient()
    try:
        watch = source.ConfigMapWatch(api, "ns", "cm", "config.yaml")
        watch.resource_version = "1"
        events = [event async for event in watch._watch()]
    finally:
        await api.close()
    assert len(events) == 1
    assert isinstance(events[0], Accepted)
    assert events[0].ref is not None
    assert events[0].ref.uid == "u-1"
    assert watch.resource_version == "9"
