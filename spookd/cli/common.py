"""What every command shares: exit codes, the usage error, reading a configuration file."""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_INVALID = 2

#: The tuning variables (``SPOOKD_*`` only, no flags) and the field each sets.


class UsageError(Exception):
    """A problem with the command line; reported in one line, exit 2."""


def read_config_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


#: The source name of ``spookd validate -``.
