"""DRA mode, what to publish: a configuration → ResourceSlices and DeviceClasses (pure).

Every device is published once, in the pool of the exact set of nodes that may use
it (the union of the ``hosts`` of every mapping that lists it): every host pool,
of one node or several, selects them by a ``kubernetes.io/hostname In [...]`` node
selector (the API allows one value for ``matchFields`` on ``metadata.name``, and one
selector term; ``spec.nodeName`` is not used, because the kubelet deletes the slices
with its ``nodeName`` when it starts). A pool is split into slices of at most 64
devices, the API's limit for slices whose devices carry taints, so that a health
taint never moves a device to another slice. Each device carries the attributes
``spookd.skao.int/resource``, ``spookd.skao.int/instanceID`` and one
``env.spookd.skao.int/<KEY>`` per env key, all strings. One DeviceClass per resource
selects this driver's devices of that resource by CEL and sets
``extendedResourceName`` to the resource name, so ``resources.limits`` pod specs work
unchanged. Objects are plain dicts in the API's JSON shape; docs/dra.md describes them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from spookd.config import Config, Device
from spookd.config.labels import LabelSelector

DRIVER = "spookd.skao.int"
ENV_DOMAIN = "env.spookd.skao.int"
TAINT_KEY = "spookd.skao.int/unhealthy"
API_VERSION = "resource.k8s.io/v1"
HOSTNAME_LABEL = "kubernetes.io/hostname"
MANAGED_BY = {"app.kubernetes.io/managed-by": "spookd"}
#: Annotation on every slice of a pool: the digest of the pool's content without its generation.
FINGERPRINT = "spookd.skao.int/pool-fingerprint"
#: Annotation on a DeviceClass: the resource name it serves.
RESOURCE_ANNOTATION = "spookd.skao.int/resource"
#: resource.k8s.io/v1 ResourceSliceMaxDevicesWithAdvancedFeatures (devices with taints).
MAX_DEVICES_PER_SLICE = 64
MAX_DNS_LABEL = 63
MAX_DNS_SUBDOMAIN = 253

DeviceKey = tuple[str, str]
_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_NOT_SUBDOMAIN = re.compile(r"[^a-z0-9.-]+")


@dataclass(frozen=True)
class Pool:
    """One pool: the nodes that reach its devices, and its devices by device name (sorted)."""

    name: str
    hosts: tuple[str, ...]
    devices: tuple[tuple[str, Device], ...]
    #: Set for the pool of a ``nodeSelector`` mapping (then ``hosts`` is empty).
    selector: LabelSelector | None = None

    def keys(self) -> frozenset[DeviceKey]:
        """(resource, instance ID) of every device in the pool."""
        return frozenset((d.resource_name, d.instance_id) for _, d in self.devices)

    def only(self, keys: Collection[DeviceKey]) -> Pool:
        """This pool with only the devices in ``keys``."""
        kept = tuple((name, d) for name, d in self.devices if (d.resource_name, d.instance_id) in keys)
        return Pool(self.name, self.hosts, kept, self.selector)


def _digest(text: str, size: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def _fit(readable: str, key: str, limit: int, *, hashed: bool) -> str:
    """``readable`` cut to ``limit``, with a digest of ``key`` appended when asked or needed."""
    readable = readable.strip("-.") or "x"
    if not hashed and len(readable) <= limit:
        return readable
    suffix = "-" + _digest(key)
    return readable[: limit - len(suffix)].rstrip("-.") + suffix


def pool_name(hosts: Iterable[str]) -> str:
    """A pool's name: the node name for one node, ``shared-<digest>`` for several."""
    names = sorted(hosts)
    if len(names) == 1:
        return names[0]
    return "shared-" + _digest(",".join(names), 12)


def selector_pool_name(selector: LabelSelector) -> str:
    """The pool of a label selector: ``selector-<digest>`` of its canonical form."""
    return "selector-" + _digest(json.dumps(selector_term(selector), sort_keys=True), 12)


def selector_term(selector: LabelSelector) -> dict[str, Any]:
    """A label selector as one node-selector term (the operators mean the same on Nodes)."""
    expressions: list[dict[str, Any]] = [
        {"key": key, "operator": "In", "values": [value]} for key, value in selector.match_labels
    ]
    for requirement in selector.match_expressions:
        expression: dict[str, Any] = {"key": requirement.key, "operator": requirement.operator}
        if requirement.operator in ("In", "NotIn"):
            expression["values"] = sorted(requirement.values)
        expressions.append(expression)
    return {"matchExpressions": expressions}


def _device_name(device: Device, *, hashed: bool) -> str:
    short = device.resource_name.partition("/")[2]
    raw = f"{short}-{device.instance_id}"
    clean = _NOT_DNS.sub("-", raw.lower())
    key = f"{device.resource_name}\x00{device.instance_id}"
    return _fit(clean, key, MAX_DNS_LABEL, hashed=hashed or clean != raw)


def class_name(resource: str, *, hashed: bool = False) -> str:
    """The DeviceClass of a resource: ``example.com/widget`` → ``widget.example.com``."""
    domain, _, short = resource.partition("/")
    raw = f"{short}.{domain}"
    clean = _NOT_SUBDOMAIN.sub("-", raw.lower())
    return _fit(clean, resource, MAX_DNS_SUBDOMAIN, hashed=hashed or clean != raw)


def _unique_names(devices: list[Device]) -> list[tuple[str, Device]]:
    names = [_device_name(d, hashed=False) for d in devices]
    clash = {n for n in names if names.count(n) > 1}
    return sorted(
        (_device_name(d, hashed=True) if n in clash else n, d) for n, d in zip(names, devices, strict=True)
    )


def desired_pools(config: Config) -> dict[str, Pool]:
    """Every pool the configuration describes, by name.

    A device of ``hosts`` mappings is in the pool of the union of their hosts; a device
    of a ``nodeSelector`` mapping in the pool of that selector (``spookd validate
    --dra`` refuses a device that would need both, or two selectors: one selector term).
    """
    hosts: dict[DeviceKey, set[str]] = {}
    selectors: dict[DeviceKey, LabelSelector] = {}
    devices: dict[DeviceKey, Device] = {}
    for mapping in config.mappings:
        for device in mapping.devices:
            key = (device.resource_name, device.instance_id)
            hosts.setdefault(key, set()).update(mapping.hosts)
            if mapping.node_selector is not None:
                selectors.setdefault(key, mapping.node_selector)
            devices[key] = device
    grouped: dict[tuple[tuple[str, ...], LabelSelector | None], list[Device]] = {}
    for key, names in hosts.items():
        selector = selectors.get(key)
        group = ((), selector) if selector is not None else (tuple(sorted(names)), None)
        grouped.setdefault(group, []).append(devices[key])
    pools = {}
    for (members_hosts, selector), members in grouped.items():
        name = selector_pool_name(selector) if selector is not None else pool_name(members_hosts)
        pools[name] = Pool(name, members_hosts, tuple(_unique_names(sorted(members))), selector)
    return dict(sorted(pools.items()))


def _device_object(name: str, device: Device, driver: str, tainted: bool) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        f"{driver}/resource": {"string": device.resource_name},
        f"{driver}/instanceID": {"string": device.instance_id},
    }
    for key, value in device.env:
        attributes[f"{ENV_DOMAIN}/{key}"] = {"string": value}
    obj: dict[str, Any] = {"name": name, "attributes": attributes}
    if tainted:
        obj["taints"] = [{"key": TAINT_KEY, "value": "probe-failed", "effect": "NoSchedule"}]
    return obj


def slice_name(pool: str, index: int) -> str:
    """The name of a pool's ``index``-th slice."""
    return _fit(f"spookd-{pool}-{index}", f"{pool}\x00{index}", MAX_DNS_SUBDOMAIN, hashed=False)


def node_selection(hosts: tuple[str, ...], selector: LabelSelector | None = None) -> dict[str, Any]:
    """The spec fields that select a pool's nodes."""
    if selector is not None:
        return {"nodeSelector": {"nodeSelectorTerms": [selector_term(selector)]}}
    # Never spec.nodeName, even for one host: the kubelet's DRA plugin manager deletes
    # every slice whose nodeName is its node when it starts (docs/dra.md).
    term = {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": list(hosts)}]}
    return {"nodeSelector": {"nodeSelectorTerms": [term]}}


def pool_slices(
    pool: Pool, generation: int, unhealthy: Collection[DeviceKey] = (), driver: str = DRIVER
) -> list[dict[str, Any]]:
    """The ResourceSlice objects of a pool at ``generation``; a pool of no devices has one empty slice."""
    chunks = [
        pool.devices[i : i + MAX_DEVICES_PER_SLICE]
        for i in range(0, len(pool.devices), MAX_DEVICES_PER_SLICE)
    ] or [()]
    fingerprint = pool_fingerprint(pool, unhealthy, driver)
    slices = []
    for index, chunk in enumerate(chunks):
        spec: dict[str, Any] = {
            "driver": driver,
            "pool": {"name": pool.name, "generation": generation, "resourceSliceCount": len(chunks)},
            **node_selection(pool.hosts, pool.selector),
            "devices": [
                _device_object(name, d, driver, (d.resource_name, d.instance_id) in unhealthy)
                for name, d in chunk
            ],
        }
        slices.append(
            {
                "apiVersion": API_VERSION,
                "kind": "ResourceSlice",
                "metadata": {
                    "name": slice_name(pool.name, index),
                    "labels": dict(MANAGED_BY),
                    "annotations": {FINGERPRINT: fingerprint},
                },
                "spec": spec,
            }
        )
    return slices


def pool_fingerprint(pool: Pool, unhealthy: Collection[DeviceKey] = (), driver: str = DRIVER) -> str:
    """A digest of everything a pool's slices say except their generation."""
    content = {
        "driver": driver,
        "hosts": pool.hosts,
        "selector": selector_term(pool.selector) if pool.selector is not None else None,
        "devices": [
            _device_object(name, d, driver, (d.resource_name, d.instance_id) in unhealthy)
            for name, d in pool.devices
        ],
        "perSlice": MAX_DEVICES_PER_SLICE,
    }
    if pool.selector is not None:
        content["selector"] = selector_term(pool.selector)
    return _digest(json.dumps(content, sort_keys=True), 16)


def device_classes(config: Config, driver: str = DRIVER) -> list[dict[str, Any]]:
    """One DeviceClass per resource name, sorted by resource."""
    resources = sorted({d.resource_name for m in config.mappings for d in m.devices})
    names = [class_name(r) for r in resources]
    clash = {n for n in names if names.count(n) > 1}
    classes = []
    for resource, name in zip(resources, names, strict=True):
        expression = f'device.driver == "{driver}" && device.attributes["{driver}"].resource == "{resource}"'
        classes.append(
            {
                "apiVersion": API_VERSION,
                "kind": "DeviceClass",
                "metadata": {
                    "name": class_name(resource, hashed=True) if name in clash else name,
                    "labels": dict(MANAGED_BY),
                    "annotations": {RESOURCE_ANNOTATION: resource},
                },
                "spec": {
                    "selectors": [{"cel": {"expression": expression}}],
                    "extendedResourceName": resource,
                },
            }
        )
    return classes


def device_key(device: Mapping[str, Any], driver: str = DRIVER) -> DeviceKey | None:
    """(resource, instance ID) of a published device object, None if it is not one of ours."""
    attributes = device.get("attributes") or {}
    resource = (attributes.get(f"{driver}/resource") or {}).get("string")
    instance = (attributes.get(f"{driver}/instanceID") or {}).get("string")
    if isinstance(resource, str) and isinstance(instance, str):
        return resource, instance
    return None
