"""``spookd status``: every configured device, its nodes, their health and who holds it.

Read with the operator's kubeconfig, from the API only (no node access): the Nodes
(labels, for selectors; capacity and allocatable of each resource, which is what the
kubelet reports of Spookd's health), the Leases of exclusive devices (which node
holds each) and the pods bound to a node that request a resource. See
docs/operator-guide.md ("Who has the device?").
"""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from spookd.config.model import Config
from spookd.kube.leaserecords import LABELS, lease_key

_DONE = ("Succeeded", "Failed")


def _requests(pod: Any, resource: str) -> int:
    total = 0
    for container in [*(pod.spec.init_containers or []), *(pod.spec.containers or [])]:
        resources = container.resources
        wanted = (resources.limits or {}) if resources is not None else {}
        wanted = wanted or ((resources.requests or {}) if resources is not None else {})
        total += int(wanted.get(resource, 0) or 0)
    return total


async def gather(api: client.ApiClient, config: Config, lease_namespace: str | None) -> dict[str, Any]:
    """The status report as JSON-ready data."""
    core = client.CoreV1Api(api)
    nodes = (await core.list_node()).items or []
    by_name = {n.metadata.name: n for n in nodes}
    leases: dict[tuple[str, str], Any] = {}
    if lease_namespace is not None:
        coordination = client.CoordinationV1Api(api)
        selector = ",".join(f"{k}={v}" for k, v in LABELS.items())
        listed = await coordination.list_namespaced_lease(lease_namespace, label_selector=selector)
        for item in listed.items or []:
            key = lease_key(item)
            if key is not None:
                leases[key] = item
    pods = [
        p
        for p in (await core.list_pod_for_all_namespaces()).items or []
        if p.spec.node_name and (p.status.phase or "") not in _DONE
    ]
    shared = config.shared_devices()
    devices: dict[tuple[str, str], set[str]] = {}
    seats: dict[tuple[str, str], list[str]] = {}
    missing: dict[tuple[str, str], set[str]] = {}
    for mapping in config.mappings:
        chosen = {name for name in by_name if mapping.applies_to(name.lower(), _labels(by_name[name]))}
        absent = {host for host in mapping.hosts if host not in {n.lower() for n in by_name}}
        for device in mapping.devices:
            key = (device.resource_name, device.instance_id)
            devices.setdefault(key, set()).update(chosen)
            seats[key] = device.seats()
            missing.setdefault(key, set()).update(absent)
    report = []
    for (resource, device_id), names in sorted(devices.items()):
        entry: dict[str, Any] = {
            "resourceName": resource,
            "instanceID": device_id,
            "exclusive": (resource, device_id) in shared,
            "nodes": [_node(by_name[name], resource) for name in sorted(names)],
            "missingNodes": sorted(missing[(resource, device_id)]),
        }
        if entry["exclusive"]:
            # Each seat of a device of capacity N is claimed by its own Lease.
            held = [
                {
                    "seat": seat,
                    "node": lease.spec.holder_identity,
                    "renewTime": str(lease.spec.renew_time or lease.spec.acquire_time or ""),
                    "lease": f"{lease.metadata.namespace}/{lease.metadata.name}",
                }
                for seat in seats[(resource, device_id)]
                if (lease := leases.get((resource, seat))) is not None and lease.spec.holder_identity
            ]
            entry["holders"] = held
            entry["holder"] = held[0] if held else None
            holders = {h["node"] for h in held}
        else:
            holders = names
        entry["pods"] = [
            {"namespace": p.metadata.namespace, "name": p.metadata.name, "node": p.spec.node_name}
            for p in sorted(pods, key=lambda p: (p.metadata.namespace, p.metadata.name))
            if p.spec.node_name in holders and _requests(p, resource) > 0
        ]
        report.append(entry)
    return {"leaseNamespace": lease_namespace, "devices": report}


def _labels(node: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (node.metadata.labels or {}).items()}


def _node(node: Any, resource: str) -> dict[str, Any]:
    status = node.status
    capacity = (status.capacity or {}) if status is not None else {}
    allocatable = (status.allocatable or {}) if status is not None else {}
    ready = ""
    for condition in (status.conditions or []) if status is not None else []:
        if condition.type == "Ready":
            ready = condition.status
    return {
        "name": node.metadata.name,
        "ready": ready or "Unknown",
        "capacity": int(capacity.get(resource, 0) or 0),
        "allocatable": int(allocatable.get(resource, 0) or 0),
    }


def text(report: dict[str, Any]) -> str:
    """The report for a terminal: one block per device."""
    lines = []
    for device in report["devices"]:
        kind = "exclusive" if device["exclusive"] else "node-local"
        lines.append(f"{device['resourceName']} {device['instanceID']} ({kind})")
        for node in device["nodes"]:
            lines.append(
                f"  node {node['name']}: Ready={node['ready']}, "
                f"{node['allocatable']}/{node['capacity']} allocatable"
            )
        for name in device["missingNodes"]:
            lines.append(f"  node {name}: not in the cluster")
        if not device["nodes"] and not device["missingNodes"]:
            lines.append("  no node selected")
        if device["exclusive"]:
            for holder in device["holders"]:
                seat = "" if holder["seat"] == device["instanceID"] else f"seat {holder['seat']} "
                lines.append(
                    f"  {seat}held by {holder['node']} "
                    f"(Lease {holder['lease']}, renewed {holder['renewTime']})"
                )
            if not device["holders"]:
                lines.append("  held by nobody")
        pods = ", ".join(f"{p['namespace']}/{p['name']} on {p['node']}" for p in device["pods"])
        lines.append(f"  pods requesting {device['resourceName']}: {pods or 'none'}")
    return "\n".join(lines)


async def status(
    config_text: bytes | None,
    source: str,
    *,
    configmap: tuple[str, str, str] | None,
    lease_namespace: str | None,
    kubeconfig: str | None,
) -> dict[str, Any]:
    """Load the configuration (a file's bytes, or the ConfigMap (namespace, name, key)) and gather."""
    from spookd.config import load_config
    from spookd.kube.client import connect

    api = await connect(kubeconfig)
    try:
        if configmap is not None:
            namespace, name, key = configmap
            found = await client.CoreV1Api(api).read_namespaced_config_map(name, namespace)
            data = found.data or {}
            if key not in data:
                raise LookupError(f"the ConfigMap {namespace}/{name} has no key `{key}`")
            config_text = data[key].encode()
        assert config_text is not None
        config = load_config(config_text, source)
        return await gather(api, config, lease_namespace)
    except ApiException as exc:
        raise LookupError(
            f"the API server answered {exc.status} {exc.reason}; `spookd status` needs list on nodes, "
            "pods and (in the Lease namespace) leases, and get on the ConfigMap"
        ) from None
    finally:
        await api.close()
