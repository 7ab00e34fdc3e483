"""The HTTP endpoint: /healthz, /readyz and /metrics on the daemon's event loop (SPEC §7).

/healthz needs no ticker: the handler itself runs on the event loop, so a loop
that is stuck cannot answer at all (the kubelet's probe timeout sees that), and a
loop that is slow shows in how long one more pass over its ready callbacks takes
at the moment of asking. An idle daemon makes no wake-ups for this.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import anyio
from aiohttp import web
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from spookd.observe import metrics

#: /healthz fails when one pass of the loop takes longer than this.
MAX_LOOP_LAG = 2.0

Readiness = Callable[[], tuple[bool, str]]


async def loop_lag() -> float:
    """Seconds until a callback queued now runs: the loop's backlog at this moment."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    asked = time.monotonic()
    loop.call_soon(done.set_result, None)
    await done
    return time.monotonic() - asked


async def serve_http(host: str, port: int, ready: Readiness) -> None:
    """Serve the probes and metrics until cancelled."""

    async def healthz(_: web.Request) -> web.Response:
        lag = await loop_lag()
        if lag < MAX_LOOP_LAG:
            return web.Response(text="ok\n")
        return web.Response(status=503, text=f"event loop stalled: {lag:.1f}s behind\n")

    async def readyz(_: web.Request) -> web.Response:
        is_ready, reason = ready()
        return web.Response(status=200 if is_ready else 503, text=reason + "\n")

    async def metrics_page(_: web.Request) -> web.Response:
        body = generate_latest(metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        logger.info("http endpoint listening", address=f"{host}:{port}")
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
