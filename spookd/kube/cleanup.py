"""Opt-in removal of stale extended resources from the Node status (SPEC §10).

When a resource leaves this node's configuration, the kubelet keeps it on the Node
with quantity 0 forever. With ``--cleanup-stale-resources`` Spookd removes it, but
only a resource this process served and withdrew, and only while the Node shows it
at exactly 0: the JSON patch tests the value before removing it, so a resource that
another plugin serves (non-zero) is never touched. The kubelet can write the 0 back
until its endpoint grace period (5 minutes) ends, so each withdrawn resource is
watched for a while and removed again whenever it reappears at 0.
"""

from __future__ import annotations

import aiohttp
import anyio
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from loguru import logger

#: How long after withdrawal a resource is watched on the Node.
WATCH_FOR = 600.0
#: Seconds between looks at the Node.
RECHECK = 15.0
FIRST_LOOK = 0.5
REQUEST_TIMEOUT = 30


def _pointer(section: str, resource: str) -> str:
    return f"/status/{section}/" + resource.replace("~", "~0").replace("/", "~1")


class StaleResourceCleaner:
    """Removes withdrawn resources from the Node status once the kubelet reports 0."""

    def __init__(self, api: client.ApiClient, node_name: str) -> None:
        self.core = client.CoreV1Api(api)
        self.node_name = node_name
        self._tg: anyio.abc.TaskGroup | None = None
        self._pending: dict[str, anyio.CancelScope] = {}
        self.served: set[str] = set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the watches of withdrawn resources until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await anyio.sleep_forever()

    def serving(self, resource: str) -> None:
        """Spookd serves ``resource`` (again): never clean it while it does."""
        self.served.add(resource)
        scope = self._pending.pop(resource, None)
        if scope is not None:
            scope.cancel()

    def withdrawn(self, resource: str) -> None:
        """Spookd stopped serving ``resource``: watch the Node and remove it at 0."""
        if resource not in self.served or resource in self._pending or self._tg is None:
            return
        scope = anyio.CancelScope()
        self._pending[resource] = scope
        self._tg.start_soon(self._watch, resource, scope)

    async def _watch(self, resource: str, scope: anyio.CancelScope) -> None:
        with scope:
            await anyio.sleep(FIRST_LOOK)
            deadline = anyio.current_time() + WATCH_FOR
            while anyio.current_time() < deadline:
                try:
                    await self._try_remove(resource)
                except (TimeoutError, ApiException, aiohttp.ClientError, OSError) as exc:
                    logger.warning(
                        "cannot clean stale resource {resource} from node {node}: {error}",
                        resource=resource,
                        node=self.node_name,
                        error=getattr(exc, "reason", None) or str(exc),
                    )
                await anyio.sleep(RECHECK)
        self._pending.pop(resource, None)

    async def _try_remove(self, resource: str) -> None:
        node = await self.core.read_node_status(self.node_name, _request_timeout=REQUEST_TIMEOUT)
        status = node.status
        patch: list[dict[str, str]] = []
        for section, values in (
            ("capacity", status.capacity or {}),
            ("allocatable", status.allocatable or {}),
        ):
            if resource not in values:
                continue
            if str(values[resource]) != "0":
                return  # in use by someone: another plugin, or the kubelet has not caught up
            path = _pointer(section, resource)
            patch += [{"op": "test", "path": path, "value": "0"}, {"op": "remove", "path": path}]
        if not patch:
            return
        try:
            await self.core.patch_node_status(self.node_name, patch, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status in (409, 422):  # the test failed: the value changed meanwhile
                return
            raise
        logger.info("removed stale resource from the node status", resource=resource, node=self.node_name)
