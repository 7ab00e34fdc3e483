"""Per-device health probes: TCP connect or path exists (SPEC §10).

Each device with a ``healthCheck`` gets one task in the prober's task group. Probes
run with bounded parallelism and each is cut off at its timeout, so a probe that
hangs delays nothing but itself; Allocate never waits on a probe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import anyio
from loguru import logger

from spookd.config.model import HEALTHY, UNHEALTHY, Device, HealthCheck
from spookd.health import ProbeState, observe

#: Probes in flight at once, over all devices.
MAX_PARALLEL_PROBES = 32

HealthCallback = Callable[[str, str, str], None]


async def probe(check: HealthCheck, limiter: anyio.CapacityLimiter) -> bool:
    """One probe: True when the device answered within the timeout."""
    async with limiter:
        with anyio.move_on_after(check.timeout):
            try:
                if check.tcp is not None:
                    host, _, port = check.tcp.rpartition(":")
                    stream = await anyio.connect_tcp(host.strip("[]"), int(port))
                    await stream.aclose()
                    return True
                assert check.path is not None
                return await anyio.Path(check.path).exists()
            except OSError:
                return False
        return False


class HealthProber:
    """Runs one probe loop per device with a health check; reports changes of health."""

    def __init__(self, on_change: HealthCallback) -> None:
        self._tg: anyio.abc.TaskGroup | None = None
        self._on_change = on_change
        self._limiter = anyio.CapacityLimiter(MAX_PARALLEL_PROBES)
        self._loops: dict[tuple[str, str], tuple[HealthCheck, anyio.CancelScope]] = {}

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the probe loops until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await anyio.sleep_forever()

    def sync(self, desired: Mapping[str, Mapping[str, Device]]) -> None:
        """Start probes for new or changed checks; stop those of devices gone or unchecked."""
        wanted = {
            (resource, device_id): device.health_check
            for resource, devices in desired.items()
            for device_id, device in devices.items()
            if device.health_check is not None
        }
        for key, (check, scope) in list(self._loops.items()):
            if wanted.get(key) != check:
                scope.cancel()
                del self._loops[key]
        assert self._tg is not None or not wanted, "HealthProber.run owns the probe loops"
        for key, check in wanted.items():
            if key not in self._loops and self._tg is not None:
                scope = anyio.CancelScope()
                self._loops[key] = (check, scope)
                self._tg.start_soon(self._loop, key, check, scope)

    async def _loop(self, key: tuple[str, str], check: HealthCheck, scope: anyio.CancelScope) -> None:
        resource, device_id = key
        target = check.tcp or check.path
        state = ProbeState()
        with scope:
            while True:
                ok = await probe(check, self._limiter)
                new = observe(state, ok, check)
                if new.healthy != state.healthy:
                    health = HEALTHY if new.healthy else UNHEALTHY
                    log = logger.info if new.healthy else logger.warning
                    log(
                        "device health changed",
                        resource=resource,
                        device=device_id,
                        health=health,
                        probe=target,
                    )
                    self._on_change(resource, device_id, health)
                state = new
                await anyio.sleep(check.interval)
