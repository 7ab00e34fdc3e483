"""The one place that knows the generated v1beta1 names (SPEC §5 wire types)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from spookd._proto import v1beta1 as api
from spookd._proto.upb.v1beta1 import api_pb2 as pb
from spookd.allocation import HostDevices

API_VERSION = "v1beta1"

#: What every Spookd plugin tells the kubelet in Register and GetDevicePluginOptions.
PLUGIN_OPTIONS = api.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)


def snapshot(health: Mapping[str, str]) -> api.ListAndWatchResponse:
    """A ListAndWatch message for ``{instance_id: health}``, sorted by ID."""
    return api.ListAndWatchResponse(
        devices=[api.Device(id=device_id, health=health[device_id]) for device_id in sorted(health)]
    )


def register_request(resource_name: str, socket_name: str) -> api.RegisterRequest:
    """The Register call for one resource served on ``socket_name``."""
    return api.RegisterRequest(
        version=API_VERSION,
        endpoint=socket_name,
        resource_name=resource_name,
        options=PLUGIN_OPTIONS,
    )


def container_response(env: Mapping[str, str], host: HostDevices) -> pb.ContainerAllocateResponse:
    """One container's share of an Allocate answer (protobuf's own classes: the hot path)."""
    return pb.ContainerAllocateResponse(
        envs=env,
        mounts=[
            pb.Mount(container_path=m.container_path, host_path=m.host_path, read_only=m.read_only)
            for m in host.mounts
        ],
        devices=[
            pb.DeviceSpec(container_path=n.container_path, host_path=n.host_path, permissions=n.permissions)
            for n in host.device_nodes
        ],
        annotations=dict(host.annotations),
        cdi_devices=[pb.CDIDevice(name=name) for name in host.cdi_devices],
    )


def preferred_requests(
    request: api.PreferredAllocationRequest,
) -> list[tuple[list[str], list[str], int]]:
    """(available, must_include, size) of each container in GetPreferredAllocation."""
    return [
        (list(c.available_deviceIDs), list(c.must_include_deviceIDs), c.allocation_size)
        for c in request.container_requests
    ]


def preferred_response(choices: Iterable[list[str]]) -> api.PreferredAllocationResponse:
    """The GetPreferredAllocation answer for each container's chosen IDs."""
    return api.PreferredAllocationResponse(
        container_responses=[api.ContainerPreferredAllocationResponse(device_i_ds=c) for c in choices]
    )
