"""Moments read from containerd's and the kubelet's own logs, at their full resolution.

A pod's ``startedAt`` has 1 s resolution and a poll loop sees a change late, so a
"within N s" of two events is measured from the components' log lines instead:
containerd (text format, nanoseconds, UTC) logs ``StartContainer for "<id>"`` when the
CRI call arrives, before runc starts the process; the kubelet (klog, microseconds,
no year) logs ``Got registration request from device plugin with resource`` when a
plugin's Register call reaches it.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path

_CONTAINERD_TIME = re.compile(r'^time="([^"]+)"')
_KLOG = re.compile(r"^[IWEF](\d{2})(\d{2}) (\d{2}):(\d{2}):(\d{2})\.(\d{6}) ")
_REGISTRATION = re.compile(
    r'"Got registration request from device plugin with resource" resourceName="([^"]+)"'
)


class MissingEvidence(AssertionError):
    """A log does not hold the line a measurement needs."""


def container_start_requested(containerd_log: Path, container_id: str) -> datetime:
    """When containerd received the CRI StartContainer call of ``container_id``."""
    wanted = f'msg="StartContainer for \\"{container_id}\\""'
    for line in containerd_log.read_text(errors="replace").splitlines():
        if wanted in line:
            match = _CONTAINERD_TIME.match(line)
            if match:
                return _parse_rfc3339(match.group(1))
    raise MissingEvidence(f"no StartContainer line for {container_id} in {containerd_log}")


def registrations_after(
    kubelet_log: Path, since: datetime, resources: Collection[str]
) -> dict[str, datetime]:
    """The first Register call of each of ``resources`` the kubelet received at or after ``since``."""
    found: dict[str, datetime] = {}
    for line in kubelet_log.read_text(errors="replace").splitlines():
        registration = _REGISTRATION.search(line)
        if registration is None or registration.group(1) not in resources:
            continue
        match = _KLOG.match(line)
        if match is None:
            continue
        month, day, hour, minute, second, micro = (int(g) for g in match.groups())
        moment = datetime(since.year, month, day, hour, minute, second, micro, tzinfo=UTC)
        if moment >= since:
            found.setdefault(registration.group(1), moment)
    missing = set(resources) - set(found)
    if missing:
        raise MissingEvidence(f"the kubelet logged no registration of {sorted(missing)} since {since}")
    return found


def _parse_rfc3339(text: str) -> datetime:
    # containerd prints nanoseconds; datetime keeps microseconds
    text = text.replace("Z", "+00:00")
    match = re.match(r"^(.*\.\d{6})\d*(.*)$", text)
    if match:
        text = match.group(1) + match.group(2)
    return datetime.fromisoformat(text)
