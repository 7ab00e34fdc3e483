"""Configuration: model, YAML loading with positions, validation (pure, no I/O)."""

from spookd.config.dralimits import check_dra
from spookd.config.load import MAX_FILE_BYTES, load_config
from spookd.config.model import (
    HEALTHY,
    UNHEALTHY,
    Config,
    ConfigError,
    ConfigInvalid,
    Device,
    DeviceMapping,
    DeviceNode,
    HealthCheck,
    Mount,
    NodeDevices,
)

__all__ = [
    "HEALTHY",
    "MAX_FILE_BYTES",
    "UNHEALTHY",
    "Config",
    "ConfigError",
    "ConfigInvalid",
    "Device",
    "DeviceMapping",
    "DeviceNode",
    "HealthCheck",
    "Mount",
    "NodeDevices",
    "check_dra",
    "load_config",
]
