"""Prometheus metrics (SPEC §7). One registry per process, created when first needed.

Without the HTTP endpoint nobody can read them, so until :func:`enable` (or a look at
``REGISTRY``) every metric is a stand-in that does nothing, and prometheus_client is not
imported at all: its package brings http.server, wsgiref, urllib and email with it,
about 2.8 MiB of resident memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from spookd import __version__

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

    REGISTRY: CollectorRegistry
    DEVICES: Gauge
    ALLOCATIONS: Counter
    ALLOCATE_ERRORS: Counter
    ALLOCATE_LATENCY: Histogram
    REGISTRATIONS: Counter
    KUBELET_RESTARTS: Counter
    CONFIG_RELOADS: Counter
    LAST_GOOD_CONFIG: Gauge
    BUILD_INFO: Info

_NAMES = (
    "REGISTRY", "DEVICES", "ALLOCATIONS", "ALLOCATE_ERRORS", "ALLOCATE_LATENCY", "REGISTRATIONS",
    "KUBELET_RESTARTS", "CONFIG_RELOADS", "LAST_GOOD_CONFIG", "BUILD_INFO",
)  # fmt: skip
#: set once the metrics will be served
_enabled: list[bool] = []


def enable() -> None:
    """Record metrics from now on (the HTTP endpoint will serve them)."""
    _enabled.append(True)


class _Unrecorded:
    """What a metric is while nobody can read it: every call does nothing."""

    def labels(self, *values: str, **named: str) -> _Unrecorded:
        return self

    def __getattr__(self, name: str) -> Callable[..., None]:
        # inc, set, observe, remove, info, ...: whatever the metric's type offers
        return _nothing


def _nothing(*args: object, **kwargs: object) -> None:
    pass


_UNRECORDED = _Unrecorded()


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not _enabled and name != "REGISTRY":
        return _UNRECORDED
    _create()
    return globals()[name]


def _create() -> None:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

    registry = CollectorRegistry(auto_describe=True)
    build = Info("spookd_build", "Spookd build information.", registry=registry)
    build.info({"version": __version__})
    globals().update(
        REGISTRY=registry,
        DEVICES=Gauge(
            "spookd_devices",
            "Devices advertised to the kubelet, by resource and health.",
            ["resource", "health"],
            registry=registry,
        ),
        ALLOCATIONS=Counter(
            "spookd_allocations",
            "Devices handed to containers by Allocate, by resource.",
            ["resource"],
            registry=registry,
        ),
        ALLOCATE_ERRORS=Counter(
            "spookd_allocate_errors",
            "Allocate calls refused (unknown or duplicated device IDs), by resource.",
            ["resource"],
            registry=registry,
        ),
        ALLOCATE_LATENCY=Histogram(
            "spookd_allocate_duration_seconds",
            "Time to answer Allocate inside Spookd.",
            ["resource"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25),
            registry=registry,
        ),
        REGISTRATIONS=Counter(
            "spookd_registrations",
            "Register calls to the kubelet, by resource and result.",
            ["resource", "result"],
            registry=registry,
        ),
        KUBELET_RESTARTS=Counter(
            "spookd_kubelet_restarts",
            "Kubelet restarts seen (kubelet.sock replaced by a new file).",
            registry=registry,
        ),
        CONFIG_RELOADS=Counter(
            "spookd_config_reloads",
            "Configuration versions seen, by result (accepted, rejected, deleted).",
            ["result"],
            registry=registry,
        ),
        LAST_GOOD_CONFIG=Gauge(
            "spookd_config_last_good_timestamp_seconds",
            "Unix time at which the last valid configuration was applied.",
            registry=registry,
        ),
        BUILD_INFO=build,
    )
