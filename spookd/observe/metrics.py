"""Prometheus metrics (SPEC §7). One registry per process, created at import."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from spookd import __version__

REGISTRY = CollectorRegistry(auto_describe=True)

DEVICES = Gauge(
    "spookd_devices",
    "Devices advertised to the kubelet, by resource and health.",
    ["resource", "health"],
    registry=REGISTRY,
)
ALLOCATIONS = Counter(
    "spookd_allocations",
    "Devices handed to containers by Allocate, by resource.",
    ["resource"],
    registry=REGISTRY,
)
ALLOCATE_ERRORS = Counter(
    "spookd_allocate_errors",
    "Allocate calls refused (unknown or duplicated device IDs), by resource.",
    ["resource"],
    registry=REGISTRY,
)
ALLOCATE_LATENCY = Histogram(
    "spookd_allocate_duration_seconds",
    "Time to answer Allocate inside Spookd.",
    ["resource"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25),
    registry=REGISTRY,
)
REGISTRATIONS = Counter(
    "spookd_registrations",
    "Register calls to the kubelet, by resource and result.",
    ["resource", "result"],
    registry=REGISTRY,
)
KUBELET_RESTARTS = Counter(
    "spookd_kubelet_restarts",
    "Kubelet restarts seen (kubelet.sock replaced by a new file).",
    registry=REGISTRY,
)
CONFIG_RELOADS = Counter(
    "spookd_config_reloads",
    "Configuration versions seen, by result (accepted, rejected, deleted).",
    ["result"],
    registry=REGISTRY,
)
LAST_GOOD_CONFIG = Gauge(
    "spookd_config_last_good_timestamp_seconds",
    "Unix time at which the last valid configuration was applied.",
    registry=REGISTRY,
)
BUILD_INFO = Info("spookd_build", "Spookd build information.", registry=REGISTRY)
BUILD_INFO.info({"version": __version__})
