"""What the node side of DRA mode reads from the API: a ResourceClaim and its pools' ResourceSlices."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from spookd.cdi import PrepareError

_API = "/apis/resource.k8s.io/v1"


class ClaimReader:
    """Reads ResourceClaims and ResourceSlices through resource.k8s.io/v1 (JSON, no models)."""

    def __init__(self, api: client.ApiClient, timeout: float = 10.0) -> None:
        self.api = api
        self.timeout = timeout

    async def _get(self, path: str, what: str, **query: str) -> dict[str, Any]:
        try:
            response = await self.api.call_api(
                path,
                "GET",
                query_params=list(query.items()),
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=self.timeout,
            )
            data = await response.read()
        except ApiException as exc:
            reason = exc.reason or ""
            if exc.status == 404:
                raise PrepareError(f"{what} not found") from None
            if exc.status == 403:
                raise PrepareError(f"reading {what}: forbidden; grant get/list on it") from None
            raise PrepareError(f"reading {what}: HTTP {exc.status} {reason}".strip()) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise PrepareError(f"reading {what}: the API server is unreachable ({exc})") from None
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise PrepareError(f"reading {what}: the API server's answer is not a JSON object")
        return parsed

    async def claim(self, namespace: str, name: str) -> dict[str, Any]:
        """One ResourceClaim; PrepareError when it is missing or unreadable."""
        path = f"{_API}/namespaces/{quote(namespace, safe='')}/resourceclaims/{quote(name, safe='')}"
        return await self._get(path, f"ResourceClaim {namespace}/{name}")

    async def slices(self, driver: str, pool: str) -> list[dict[str, Any]]:
        """The ResourceSlices of one pool of ``driver``."""
        answer = await self._get(
            f"{_API}/resourceslices",
            f"the ResourceSlices of pool {pool}",
            fieldSelector=f"spec.driver={driver},spec.pool.name={pool}",
        )
        items = answer.get("items")
        return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []
