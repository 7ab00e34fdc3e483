"""The Lease requests of cross-host claims: one path, one JSON call, one body (the I/O shell)."""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client

from spookd.kube.client import json_call
from spookd.kube.leaserecords import DEVICE_LABEL, LABELS, lease_name, now_text


class LeaseApi:
    """Reads and writes this node's device Leases in one namespace."""

    def __init__(
        self, api: client.ApiClient, namespace: str, node_name: str, lease_duration: float, timeout: float
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.node_name = node_name
        self.lease_duration = lease_duration
        self.timeout = timeout

    def path(self, name: str | None = None) -> str:
        """The collection's path, or one Lease's."""
        base = f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"
        return f"{base}/{name}" if name else base

    async def call(
        self, method: str, path: str, body: Any = None, request_timeout: float | None = None, **query: str
    ) -> tuple[int, dict[str, Any]]:
        """One request; the HTTP status and the answer's JSON object (empty if it is none)."""
        timeout = self.timeout if request_timeout is None else request_timeout
        return await json_call(self.api, method, path, body=body, request_timeout=timeout, query=query)

    def body(self, resource: str, device_id: str, resource_version: str | None = None) -> dict[str, Any]:
        """The Lease naming this node holder now; conditional on ``resource_version`` when given."""
        now = now_text()
        name = lease_name(resource, device_id)
        metadata: dict[str, Any] = {
            "name": name,
            "namespace": self.namespace,
            "labels": {**LABELS, DEVICE_LABEL: name.removeprefix("spookd-")},
            "annotations": {"spookd.skao.int/resource": resource, "spookd.skao.int/device": device_id},
        }
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": self.node_name,
                "leaseDurationSeconds": max(1, round(self.lease_duration)),
                "acquireTime": now,
                "renewTime": now,
            },
        }
