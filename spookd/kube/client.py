"""Connecting to the Kubernetes API (kubernetes-asyncio is imported only by this shell)."""

from __future__ import annotations

import os
import random

from kubernetes_asyncio import client, config
from kubernetes_asyncio.config.config_exception import ConfigException
from loguru import logger

BACKOFF_FIRST = 0.2
BACKOFF_MAX = 30.0


class Backoff:
    """Capped exponential backoff with jitter."""

    def __init__(self, first: float = BACKOFF_FIRST, cap: float = BACKOFF_MAX) -> None:
        self.first = first
        self.cap = cap
        self.attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt."""
        ceiling = min(self.cap, self.first * 2**self.attempt)
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Start again from the first delay after a success."""
        self.attempt = 0


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
