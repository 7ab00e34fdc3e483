"""This node's labels, followed through the API: LIST + WATCH of the one Node object.

Only Spookd's own Node is asked for (``fieldSelector=metadata.name=NODE``), through
the shared LIST + WATCH of spookd.kube.watch; so the API server authorizes each
request for that one name, and a ClusterRole may restrict it with ``resourceNames``.
Read only while some mapping has a ``nodeSelector`` (spookd.app starts and stops it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from kubernetes_asyncio import client
from loguru import logger

from spookd.kube.watch import Listed, ListWatch

#: What the ClusterRole must allow; logged when the API answers 401/403.
RBAC_HINT = (
    "bind the ClusterRole `spookd-node-labels` (get, list, watch on nodes; the chart's "
    "rbac.nodeLabels) to Spookd's ServiceAccount"
)


class NodeLabels:
    """The labels of Node ``node_name``, after the first LIST and after every change of them."""

    def __init__(self, api: client.ApiClient, node_name: str, watch_timeout: int | None = None) -> None:
        self.node_name = node_name
        self.list_watch = ListWatch(
            client.CoreV1Api(api).list_node,
            what="Node",
            forbidden=f"not allowed to read Node {node_name} for its labels; {RBAC_HINT}",
            server_timeout=watch_timeout,
            field_selector=f"metadata.name={node_name}",
        )
        self.list_watch.log_fields = {"node": node_name}

    async def changes(self) -> AsyncIterator[dict[str, str]]:
        """The labels once known, then again whenever they change; forever."""
        last: dict[str, str] | None = None
        async for change in self.list_watch.events():
            if isinstance(change, Listed):
                labels = _labels(change.items[0].metadata) if change.items else None
            elif change.kind == "DELETED":
                labels = None
            else:
                labels = _labels(change.obj.metadata)
            if labels is None:
                # The kubelet registers its Node again; until then the last labels stand.
                logger.warning("Node not found; keeping its last known labels", node=self.node_name)
                continue
            if labels != last:
                last = labels
                yield labels


def _labels(metadata: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (metadata.labels or {}).items()}
