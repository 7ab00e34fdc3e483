"""The DRA publisher's requests: this driver's ResourceSlices and DeviceClasses (the I/O shell).

Plain JSON through kubernetes-asyncio's ``ApiClient.call_api`` (one path per
collection, the objects exactly as spookd.draslices builds them), so that no field of
resource.k8s.io/v1 depends on the client's models. Every request has a timeout;
a write that fails raises ``DraApiError`` naming the object and the server's message.
"""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client

from spookd.draslices import API_VERSION, MANAGED_BY
from spookd.kube.client import json_call

SLICES = f"/apis/{API_VERSION}/resourceslices"
CLASSES = f"/apis/{API_VERSION}/deviceclasses"
_SELECTOR = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())


class DraApiError(Exception):
    """A request about a DRA object failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, what: str, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"{what}: HTTP {status}: {message}" if status else f"{what}: {message}")


class DraApi:
    """Lists and writes the objects of one driver."""

    def __init__(self, api: client.ApiClient, driver: str, timeout: float = 10.0) -> None:
        self.api = api
        self.driver = driver
        self.timeout = timeout
        #: Writes sent (creates, replaces, deletes), for logs and tests.
        self.writes = 0

    async def call(
        self, method: str, path: str, body: Any = None, **query: str
    ) -> tuple[int, dict[str, Any]]:
        """One request: the HTTP status and the answer's JSON object."""
        return await json_call(self.api, method, path, body=body, request_timeout=self.timeout, query=query)

    async def _list(self, path: str, what: str, **query: str) -> list[dict[str, Any]]:
        status, answer = await self.call("GET", path, **query)
        if status != 200:
            raise DraApiError(f"listing {what}", status, str(answer.get("message", "")))
        items = answer.get("items") or []
        return [item for item in items if isinstance(item, dict)]

    async def slices(self) -> list[dict[str, Any]]:
        """Every ResourceSlice of this driver."""
        return await self._list(SLICES, "ResourceSlices", fieldSelector=f"spec.driver={self.driver}")

    async def classes(self) -> list[dict[str, Any]]:
        """Every DeviceClass Spookd manages."""
        return await self._list(CLASSES, "DeviceClasses", labelSelector=_SELECTOR)

    async def put(self, path: str, obj: dict[str, Any], resource_version: str | None) -> str | None:
        """Create ``obj``, or replace it conditionally on ``resource_version`` when it exists;
        the resourceVersion written."""
        name = obj["metadata"]["name"]
        kind = obj["kind"]
        self.writes += 1
        if resource_version is None:
            status, answer = await self.call("POST", path, obj)
            ok: tuple[int, ...] = (201, 200)
        else:
            body = {**obj, "metadata": {**obj["metadata"], "resourceVersion": resource_version}}
            status, answer = await self.call("PUT", f"{path}/{name}", body)
            ok = (200,)
        if status not in ok:
            raise DraApiError(f"writing {kind} {name}", status, str(answer.get("message", "")))
        written = (answer.get("metadata") or {}).get("resourceVersion")
        return written if isinstance(written, str) else None

    async def delete(self, path: str, kind: str, name: str, resource_version: str | None = None) -> None:
        """Delete one object (gone already counts as done)."""
        self.writes += 1
        body = {"preconditions": {"resourceVersion": resource_version}} if resource_version else None
        status, answer = await self.call("DELETE", f"{path}/{name}", body)
        if status not in (200, 202, 404):
            raise DraApiError(f"deleting {kind} {name}", status, str(answer.get("message", "")))
