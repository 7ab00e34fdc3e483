"""DRA mode on the node: a claim's allocation → CDI spec content and CDI device IDs (SPEC §5, §11).

Pure: no I/O. The shell (``spookd.dra``) reads the ResourceClaim and the pool's
ResourceSlices from the API, hands them here as plain JSON objects, writes the spec
this module builds and answers the kubelet with the devices it lists.

How several devices combine (docs/dra-node.md): the environment is built per
*request* of a claim, the unit the kubelet hands to a container (a container names
``resources.claims[].request``; the claim the scheduler makes for
``resources.limits`` has one request per container and resource). Each request gets
one CDI device whose container edits carry the SPEC §5 environment of that request's
devices, numbered per resource in instance-ID order, plus their device nodes and
mounts; so an unchanged device-plugin-mode pod sees exactly the same variables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from spookd.allocation import container_env, host_devices
from spookd.config.model import Device

#: The names of the device attributes the publisher writes (bare, or qualified by the driver name).
RESOURCE_ATTRIBUTE = "resource"
INSTANCE_ID_ATTRIBUTE = "instanceID"
#: The CDI class of the devices Spookd writes: CDI IDs are ``<driver>/claim=<name>``.
CDI_CLASS = "claim"
CDI_VERSION = "0.6.0"
#: Messages to the kubelet are cut to this many characters.
_MAX_TEXT = 1000


class PrepareError(ValueError):
    """A claim cannot be prepared; the message names the claim and the fix."""


class AllocatedDevice(msgspec.Struct, frozen=True):
    """One result of a claim's allocation for this driver."""

    request: str
    pool: str
    device: str


class PreparedDevice(msgspec.Struct, frozen=True):
    """One device of the kubelet's answer (NodePrepareResourceResponse.devices)."""

    request_names: tuple[str, ...]
    pool_name: str
    device_name: str
    cdi_device_ids: tuple[str, ...]


class PreparedClaim(msgspec.Struct, frozen=True):
    """What preparing one claim produced: kept in the checkpoint, so a restart keeps it."""

    uid: str
    namespace: str
    name: str
    spec_file: str
    #: The CDI spec, as JSON text (written to ``<cdi-dir>/<spec_file>``).
    spec: str
    devices: tuple[PreparedDevice, ...]


class Checkpoint(msgspec.Struct, frozen=True):
    """The plugin's record of prepared claims, by claim UID."""

    version: int = 1
    claims: dict[str, PreparedClaim] = msgspec.field(default_factory=dict)


def _cut(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def registration_socket(kubelet_dir: str, driver: str) -> str:
    """Where the plugin watcher finds the driver: ``<kubelet-dir>/plugins_registry/<driver>-reg.sock``."""
    return f"{kubelet_dir.rstrip('/')}/plugins_registry/{driver}-reg.sock"


def endpoint_socket(kubelet_dir: str, driver: str) -> str:
    """The DRA service's socket: ``<kubelet-dir>/plugins/<driver>/dra.sock``."""
    return f"{kubelet_dir.rstrip('/')}/plugins/{driver}/dra.sock"


def spec_file_name(driver: str, claim_uid: str) -> str:
    """The CDI spec file of a claim: ``<driver>-claim_<uid>.json`` (one file per claim)."""
    return f"{driver}-{CDI_CLASS}_{claim_uid}.json"


def base_request(request: str) -> str:
    """The request a container names: a subrequest ``req/sub`` belongs to ``req``."""
    return request.split("/", 1)[0]


def claim_label(claim: Mapping[str, Any]) -> str:
    """``namespace/name`` of a ResourceClaim object."""
    meta = claim.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def allocated_devices(claim: Mapping[str, Any], driver: str) -> list[AllocatedDevice]:
    """The results of ``claim``'s allocation that name ``driver``; PrepareError if none."""
    label = claim_label(claim)
    allocation = (claim.get("status") or {}).get("allocation")
    if not allocation:
        raise PrepareError(f"ResourceClaim {label} is not allocated yet (no status.allocation)")
    results = (allocation.get("devices") or {}).get("results") or []
    ours = [
        AllocatedDevice(str(r.get("request", "")), str(r.get("pool", "")), str(r.get("device", "")))
        for r in results
        if r.get("driver") == driver
    ]
    if not ours:
        others = sorted({str(r.get("driver", "")) for r in results})
        named = ", ".join(others) if others else "no driver at all"
        raise PrepareError(
            _cut(
                f"ResourceClaim {label}: its allocation names {named}, not {driver}; "
                f"this node's Spookd prepares only devices of driver {driver}"
            )
        )
    return ours


def _attribute(attributes: Mapping[str, Any], driver: str, name: str) -> str | None:
    value = attributes.get(name, attributes.get(f"{driver}/{name}"))
    if isinstance(value, Mapping):
        text = value.get("string")
        return text if isinstance(text, str) else None
    return None


def slice_identities(
    slices: Iterable[Mapping[str, Any]], driver: str, pool: str
) -> dict[str, tuple[str, str]]:
    """``{device name: (resource name, instance ID)}`` of ``pool``'s newest generation.

    Only slices of ``driver`` and ``pool`` at the pool's highest generation count
    (older ones are being replaced); devices without both attributes are left out.
    """
    current = [
        s
        for s in slices
        if (s.get("spec") or {}).get("driver") == driver
        and ((s.get("spec") or {}).get("pool") or {}).get("name") == pool
    ]
    if not current:
        return {}
    newest = max(int(s["spec"]["pool"].get("generation", 0)) for s in current)
    found: dict[str, tuple[str, str]] = {}
    for piece in current:
        if int(piece["spec"]["pool"].get("generation", 0)) != newest:
            continue
        for device in piece["spec"].get("devices") or []:
            attributes = device.get("attributes") or {}
            resource = _attribute(attributes, driver, RESOURCE_ATTRIBUTE)
            instance = _attribute(attributes, driver, INSTANCE_ID_ATTRIBUTE)
            if resource is not None and instance is not None:
                found[str(device.get("name", ""))] = (resource, instance)
    return found


def resolve(
    claim: Mapping[str, Any],
    allocated: Sequence[AllocatedDevice],
    identities: Mapping[str, Mapping[str, tuple[str, str]]],
    node_devices: Mapping[str, Mapping[str, Device]],
    node_name: str,
) -> list[tuple[AllocatedDevice, Device]]:
    """Each allocated device with this node's configured Device; PrepareError naming the unknown ones.

    ``identities``: ``{pool: slice_identities(...)}``; ``node_devices``: the
    configuration's devices for this node (``Config.for_node``).
    """
    label = claim_label(claim)
    pairs: list[tuple[AllocatedDevice, Device]] = []
    unknown: list[str] = []
    for result in allocated:
        identity = identities.get(result.pool, {}).get(result.device)
        if identity is None:
            unknown.append(f"{result.pool}/{result.device} (in no published ResourceSlice)")
            continue
        resource, instance = identity
        device = node_devices.get(resource, {}).get(instance)
        if device is None:
            unknown.append(
                f"{result.pool}/{result.device} ({resource} {instance} is not configured "
                f"for node {node_name})"
            )
            continue
        pairs.append((result, device))
    if unknown:
        raise PrepareError(
            _cut(
                f"ResourceClaim {label}: unknown device {', '.join(unknown)}; "
                "check that the publisher and this node read the same configuration"
            )
        )
    return pairs


def _edits(devices: Sequence[Device]) -> dict[str, Any]:
    env: dict[str, str] = {}
    by_resource: dict[str, list[Device]] = {}
    for device in devices:
        by_resource.setdefault(device.resource_name, []).append(device)
    for resource, group in sorted(by_resource.items()):
        env.update(container_env(resource, group))
    host = host_devices(devices)
    edits: dict[str, Any] = {"env": [f"{k}={v}" for k, v in sorted(env.items())]}
    if host.device_nodes:
        edits["deviceNodes"] = [
            {"path": n.container_path, "hostPath": n.host_path, "permissions": n.permissions}
            for n in host.device_nodes
        ]
    if host.mounts:
        edits["mounts"] = [
            {
                "hostPath": m.host_path,
                "containerPath": m.container_path,
                "options": ["rbind", "ro" if m.read_only else "rw"],
            }
            for m in host.mounts
        ]
    return edits


def prepare_claim(
    driver: str, uid: str, namespace: str, name: str, pairs: Sequence[tuple[AllocatedDevice, Device]]
) -> PreparedClaim:
    """The CDI spec of one claim and the devices to answer with.

    One CDI device per request (``<uid>-<request>``), carrying the §5 environment of
    that request's devices; its ID goes on the request's first device (the kubelet
    hands a container every CDI ID of the requests it names, so once per request is
    once per container). Extra CDI names configured on a device (``cdiDevices``) go
    on that device.
    """
    requests: dict[str, list[tuple[AllocatedDevice, Device]]] = {}
    for result, device in pairs:
        requests.setdefault(base_request(result.request), []).append((result, device))
    cdi_devices: list[dict[str, Any]] = []
    answer: list[PreparedDevice] = []
    for request, members in sorted(requests.items()):
        cdi_name = f"{uid}-{request}"
        cdi_devices.append({"name": cdi_name, "containerEdits": _edits([d for _, d in members])})
        for index, (result, device) in enumerate(members):
            ids = ([f"{driver}/{CDI_CLASS}={cdi_name}"] if index == 0 else []) + list(device.cdi_devices)
            answer.append(PreparedDevice((request,), result.pool, result.device, tuple(ids)))
    spec = {"cdiVersion": CDI_VERSION, "kind": f"{driver}/{CDI_CLASS}", "devices": cdi_devices}
    return PreparedClaim(
        uid=uid,
        namespace=namespace,
        name=name,
        spec_file=spec_file_name(driver, uid),
        spec=msgspec.json.encode(spec).decode(),
        devices=tuple(answer),
    )


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    """The checkpoint file's bytes."""
    return msgspec.json.format(msgspec.json.encode(checkpoint))


def decode_checkpoint(data: bytes, source: str) -> Checkpoint:
    """A checkpoint from its file; PrepareError naming the file and the fix when it is unreadable."""
    try:
        return msgspec.json.decode(data, type=Checkpoint)
    except msgspec.DecodeError as exc:
        raise PrepareError(
            _cut(f"{source}: unreadable checkpoint ({exc}); it is set aside and claims are prepared anew")
        ) from None
