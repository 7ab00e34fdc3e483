"""Lease claims on a node with nothing shared sleep: no timer, no request (SPEC §9 idle figure)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from kubernetes_asyncio import client

from spookd.kube import leases

pytestmark = pytest.mark.anyio


async def test_claims_with_nothing_shared_set_no_timers(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    real_sleep = anyio.sleep

    async def counting_sleep(delay: float, *args: Any) -> None:
        sleeps.append(delay)
        await real_sleep(delay)

    monkeypatch.setattr(anyio, "sleep", counting_sleep)  # what spookd.kube.leases calls
    api = client.ApiClient(client.Configuration(host="https://127.0.0.1:9"))
    blocked: list[tuple[str, set[str]]] = []
    claims = leases.LeaseClaims(
        api, "ns", "node-a", "/nonexistent/kubelet.sock", lambda r, ids: blocked.append((r, ids)), poll=0.01
    )
    async with api, anyio.create_task_group() as tg:
        tg.start_soon(claims.run)
        await real_sleep(0.5)
        assert sleeps == [], "an idle node's claims woke up on a timer"
        claims.set_shared(frozenset({("example.com/osc", "0001")}))
        await real_sleep(0.3)
        assert sleeps, "with a shared device the claims look at PodResources again"
        tg.cancel_scope.cancel()
