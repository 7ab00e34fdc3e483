"""Health probe thresholds: a pure state machine (SPEC §10). No I/O."""

from __future__ import annotations

import msgspec

from spookd.config.model import HealthCheck


class ProbeState(msgspec.Struct, frozen=True):
    """What the probes of one device have shown so far; ``healthy`` is None before the first."""

    healthy: bool | None = None
    successes: int = 0
    failures: int = 0


def observe(state: ProbeState, ok: bool, check: HealthCheck) -> ProbeState:
    """The state after one probe result.

    The first result decides at once; after that, health flips only after
    ``failure_threshold`` failures or ``success_threshold`` successes in a row.
    """
    if state.healthy is None:
        return ProbeState(healthy=ok, successes=int(ok), failures=int(not ok))
    if ok:
        successes = state.successes + 1
        healthy = state.healthy or successes >= check.success_threshold
        return ProbeState(healthy=healthy, successes=successes, failures=0)
    failures = state.failures + 1
    healthy = state.healthy and failures < check.failure_threshold
    return ProbeState(healthy=healthy, successes=0, failures=failures)
