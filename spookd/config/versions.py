"""Configuration versions as sources yield them, and where the daemon reports what it did (SPEC §3)."""

from __future__ import annotations

from typing import Protocol

import msgspec

from spookd.config.model import Config, ConfigError


class ObjectRef(msgspec.Struct, frozen=True):
    """The Kubernetes object a configuration came from (for Events)."""

    namespace: str
    name: str
    uid: str = ""
    resource_version: str = ""


class Accepted(msgspec.Struct, frozen=True):
    """A new configuration version that passed validation."""

    config: Config
    source: str
    ref: ObjectRef | None = None


class Rejected(msgspec.Struct, frozen=True):
    """A new configuration version that failed validation; the last good one stays."""

    errors: list[ConfigError]
    source: str
    ref: ObjectRef | None = None


class Deleted(msgspec.Struct, frozen=True):
    """The configuration is gone: serve no devices."""

    source: str
    ref: ObjectRef | None = None


SourceEvent = Accepted | Rejected | Deleted


class EventSink(Protocol):
    """Where the daemon reports what it did with a configuration (Kubernetes Events).

    Each call only queues the report: reporting never waits on, nor fails, the caller.
    """

    def applied(self, event: Accepted, changes: dict[str, list[str]]) -> None:
        """A configuration was applied; ``changes`` lists added/changed/removed resources."""

    def rejected(self, event: Rejected) -> None:
        """A configuration was rejected; the last good one keeps serving."""

    def deleted(self, event: Deleted) -> None:
        """The configuration disappeared; every resource was withdrawn."""

    def registration_failing(self, resource: str, error: str, seconds: float) -> None:
        """Registering ``resource`` with the kubelet has failed for ``seconds``."""


__all__ = ["Accepted", "Deleted", "EventSink", "ObjectRef", "Rejected", "SourceEvent"]
