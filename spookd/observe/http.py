"""The HTTP endpoint: /healthz, /readyz and /metrics on the daemon's event loop (SPEC §7)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio
from aiohttp import web
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from spookd.observe import metrics

if TYPE_CHECKING:
    from spookd.app import AppState

#: The loop is unhealthy if a 10 ms tick arrives later than this.
MAX_LOOP_LAG = 2.0
_TICK = 0.1


class LoopMonitor:
    """Measures how late the event loop wakes up, to tell /healthz the truth."""

    def __init__(self) -> None:
        self.last_tick = time.monotonic()
        self.max_lag = 0.0

    async def run(self) -> None:
        """Tick forever, recording the lag of each wake-up."""
        while True:
            before = time.monotonic()
            await anyio.sleep(_TICK)
            now = time.monotonic()
            self.max_lag = max(self.max_lag, now - before - _TICK)
            self.last_tick = now

    def healthy(self) -> bool:
        """True while the loop keeps ticking."""
        return time.monotonic() - self.last_tick < MAX_LOOP_LAG


async def serve_http(host: str, port: int, state: AppState) -> None:
    """Serve the probes and metrics until cancelled."""
    monitor = LoopMonitor()

    async def healthz(_: web.Request) -> web.Response:
        if monitor.healthy():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="event loop stalled\n")

    async def readyz(_: web.Request) -> web.Response:
        ready, reason = state.ready()
        return web.Response(status=200 if ready else 503, text=reason + "\n")

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
        async with anyio.create_task_group() as tg:
            tg.start_soon(monitor.run)
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
