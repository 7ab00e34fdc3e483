"""Which devices the kubelet's containers use now: its PodResources API (read-only)."""

from __future__ import annotations

import grpclib.exceptions
from grpclib.client import Channel
from loguru import logger

from spookd._proto import v1 as podresources
from spookd.grpccalls import hung_up_as_reset

Key = tuple[str, str]


class PodResourcesReader:
    """Lists the (resource, device) pairs assigned to containers on this node."""

    def __init__(self, socket: str, timeout: float) -> None:
        self.socket = socket
        self.timeout = timeout
        self._warned = False

    async def in_use(self) -> set[Key] | None:
        """Every device a container holds, or None when the kubelet cannot be asked."""
        channel = Channel(path=self.socket)
        try:
            stub = podresources.PodResourcesListerStub(channel)
            response = await hung_up_as_reset(
                stub.list(podresources.ListPodResourcesRequest(), timeout=self.timeout)
            )
        except (
            TimeoutError,
            OSError,
            grpclib.exceptions.GRPCError,
            grpclib.exceptions.StreamTerminatedError,
        ) as exc:
            if not self._warned:
                logger.warning(
                    "cannot read the kubelet's PodResources at {socket} ({error}); "
                    "claims are kept, not released",
                    socket=self.socket,
                    error=str(exc) or type(exc).__name__,
                )
                self._warned = True
            return None
        finally:
            channel.close()
        self._warned = False
        return {
            (devices.resource_name, device_id)
            for pod in response.pod_resources
            for container in pod.containers
            for devices in container.devices
            for device_id in devices.device_ids
        }
