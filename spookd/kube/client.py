"""Connecting to the Kubernetes API (kubernetes-asyncio is imported only by this shell)."""

from __future__ import annotations

import json
import os
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException
from loguru import logger

from spookd.backoff import Backoff

__all__ = ["Backoff", "connect"]


async def connect(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster credentials in a pod; otherwise the current kubeconfig context."""
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        logger.info("using in-cluster credentials")
        return client.ApiClient()
    configuration = client.Configuration()
    try:
        await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    except (ConfigException, OSError) as exc:
        raise ConnectionError(
            f"no Kubernetes credentials: not in a pod and no usable kubeconfig ({exc}); "
            "set KUBECONFIG or run in a cluster"
        ) from exc
    logger.info("using kubeconfig", server=configuration.host)
    return client.ApiClient(configuration)


def json_object(data: bytes | str | None) -> dict[str, Any]:
    """A JSON object from an answer; anything else (HTML from a proxy, garbage) is empty."""
    if not data:
        return {}
    try:
        parsed = json.loads(data)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


async def json_call(
    api: client.ApiClient,
    method: str,
    path: str,
    *,
    body: Any,
    request_timeout: float,
    query: dict[str, str],
) -> tuple[int, dict[str, Any]]:
    """One raw JSON request to the API server: the HTTP status and the answer's JSON object."""
    try:
        response = await api.call_api(
            path,
            method,
            query_params=list(query.items()),
            header_params={"Content-Type": "application/json", "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=request_timeout,
        )
    except ApiException as exc:
        return exc.status, json_object(exc.body)
    return response.status, json_object(await response.read())
