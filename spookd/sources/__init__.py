"""Configuration sources: async iterators of configuration versions (SPEC §3)."""

from __future__ import annotations

import msgspec

from spookd.config.model import Config, ConfigError


class Accepted(msgspec.Struct, frozen=True):
    """A new configuration version that passed validation."""

    config: Config
    source: str


class Rejected(msgspec.Struct, frozen=True):
    """A new configuration version that failed validation; the last good one stays."""

    errors: list[ConfigError]
    source: str


class Deleted(msgspec.Struct, frozen=True):
    """The configuration is gone: serve no devices."""

    source: str


SourceEvent = Accepted | Rejected | Deleted

__all__ = ["Accepted", "Deleted", "Rejected", "SourceEvent"]
