"""Every setting of a running daemon, in one typed object that the command line builds (pure)."""

from __future__ import annotations

from pathlib import Path

import msgspec

DEFAULT_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
DEFAULT_POD_RESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
DEFAULT_DRA_DRIVER = "spookd.skao.int"
DEFAULT_KUBELET_DIR = "/var/lib/kubelet"
DEFAULT_CDI_DIR = "/var/run/cdi"


class Tuning(msgspec.Struct, frozen=True):
    """Timings an operator rarely changes (``SPOOKD_*`` variables, not flags; tests shorten them)."""

    #: seconds a device's Lease lasts without renewal (SPOOKD_LEASE_DURATION)
    lease_duration: float = 15.0
    #: a fresh claim is not released before this (SPOOKD_CLAIM_GRACE)
    claim_grace: float = 5.0
    #: how often the kubelet's PodResources are read for claims (SPOOKD_CLAIM_POLL)
    claim_poll: float = 0.5
    #: the API server ends each watch after about this long (SPOOKD_WATCH_TIMEOUT)
    watch_timeout: int = 300
    #: registration failing this long is reported as an Event (SPOOKD_REGISTRATION_EVENT_AFTER)
    registration_event_after: float = 60.0


class Settings(msgspec.Struct, frozen=True):
    """What ``spookd run`` was asked to do."""

    node_name: str
    plugin_dir: Path = Path(DEFAULT_PLUGIN_DIR)
    config: Path | None = None
    configmap: str | None = None
    configmap_key: str = "config.yaml"
    #: (host, port) of /healthz, /readyz and /metrics; None: no endpoint
    http_addr: tuple[str, int] | None = None
    cleanup_stale_resources: bool = False
    lease_namespace: str | None = None
    pod_resources_socket: str = DEFAULT_POD_RESOURCES_SOCKET
    tuning: Tuning = Tuning()
    #: DRA mode on the node (SPEC §11): a kubelet DRA plugin instead of device plugins
    dra: bool = False
    dra_driver: str = DEFAULT_DRA_DRIVER
    kubelet_dir: Path = Path(DEFAULT_KUBELET_DIR)
    cdi_dir: Path = Path(DEFAULT_CDI_DIR)

    @property
    def uses_api(self) -> bool:
        """Some part of this run speaks to the Kubernetes API."""
        return (
            self.configmap is not None
            or self.cleanup_stale_resources
            or bool(self.lease_namespace)
            or self.dra
        )

    @property
    def claims_namespace(self) -> str:
        """Where the Leases of exclusive devices live."""
        if self.lease_namespace:
            return self.lease_namespace
        return self.configmap.split("/")[0] if self.configmap else "default"


class PublishSettings(msgspec.Struct, frozen=True):
    """What ``spookd publish`` (DRA mode's publisher) was asked to do."""

    config: Path | None = None
    configmap: str | None = None
    configmap_key: str = "config.yaml"
    #: Namespace of the leader Lease; None: no election (one publisher only, for tests and labs).
    lease_namespace: str | None = None
    lease_name: str = "spookd-publisher"
    identity: str = "spookd-publisher"
    driver: str = "spookd.skao.int"
    #: Seconds between full listings that repair what someone else changed.
    resync: float = 60.0
    tuning: Tuning = Tuning()
