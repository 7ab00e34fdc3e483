"""A device's Lease as Spookd writes and reads it: name, labels, and the record that decides expiry."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from spookd.claims import ClaimRefused
from spookd.leasing import LeaseRecord

LABELS = {"app.kubernetes.io/managed-by": "spookd"}
#: Carries the Lease name's hash, so that a node watches only the Leases of its own devices.
DEVICE_LABEL = "spookd.skao.int/device"

Key = tuple[str, str]


def lease_name(resource: str, device_id: str) -> str:
    """A valid, stable object name for a device's Lease."""
    digest = hashlib.sha256(f"{resource}/{device_id}".encode()).hexdigest()[:20]
    return f"spookd-{digest}"


def now_text() -> str:
    """The current time as a Lease's MicroTime."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _time_text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value or "")


def lease_key(lease: Any) -> Key | None:
    """(resource, device) a Spookd Lease is about, from its annotations; None if not one of ours."""
    notes = getattr(lease.metadata, "annotations", None) or {}
    resource = notes.get("spookd.skao.int/resource")
    device = notes.get("spookd.skao.int/device")
    if not isinstance(resource, str) or not isinstance(device, str) or not resource or not device:
        return None
    return (resource, device)


def lease_record(lease: Any) -> LeaseRecord:
    """The expiry-relevant part of a kubernetes-asyncio V1Lease."""
    spec = lease.spec
    holder = (spec.holder_identity if spec is not None else None) or ""
    renewed = spec.renew_time or spec.acquire_time if spec is not None else None
    duration = float((spec.lease_duration_seconds if spec is not None else None) or 0)
    return LeaseRecord(
        holder=str(holder),
        renew_time=_time_text(renewed),
        duration=duration,
        resource_version=str(lease.metadata.resource_version or ""),
    )


def json_lease_record(lease: dict[str, Any]) -> LeaseRecord:
    """The expiry-relevant part of a Lease as JSON (an answer to a write)."""
    spec = lease.get("spec") or {}
    renewed = spec.get("renewTime") or spec.get("acquireTime")
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        renew_time=_time_text(datetime.fromisoformat(renewed.replace("Z", "+00:00")) if renewed else None),
        duration=float(spec.get("leaseDurationSeconds") or 0),
        resource_version=str(lease["metadata"]["resourceVersion"]),
    )


def answer_record(lease: dict[str, Any], what: str) -> LeaseRecord:
    """The record of the Lease an API answer carries; ClaimRefused when the answer is malformed."""
    try:
        return json_lease_record(lease)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ClaimRefused(f"the API server's answer to the Lease {what} is malformed ({exc})") from exc


def refusal(namespace: str, resource: str, device_id: str, why: str) -> str:
    """Why Allocate cannot have an exclusive device, naming its Lease."""
    return (
        f"{resource} device {device_id!r} is exclusive and {why} "
        f"(Lease {namespace}/{lease_name(resource, device_id)}); "
        "the pod cannot have it on this node now"
    )


def check_answer(status: int, body: dict[str, Any], what: str) -> None:
    """ClaimRefused for an API answer that is not a success (its message cut to 300 characters)."""
    if status >= 300:
        message = str(body.get("message", ""))[:300]
        raise ClaimRefused(f"cannot {what} the device's Lease: HTTP {status} {message}".strip())
