"""The ConfigMap source: list then watch one ConfigMap through the API (SPEC §3).

kubernetes-asyncio is imported only here, so the file source never pays its
start-up time and memory. The watch asks for the one object by field selector,
resumes from the last resourceVersion (bookmarks included), always sets a server
timeout and a client read timeout, relists on 410 Gone, and reconnects with capped
exponential backoff and jitter.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.watch import Watch
from loguru import logger

from spookd.config.model import ConfigError
from spookd.config.versions import Accepted, Deleted, ObjectRef, Rejected, SourceEvent
from spookd.kube.client import Backoff, connect
from spookd.sources.parsing import parse

#: The API server ends each watch after this long (a little randomised, as client-go does).
WATCH_SERVER_TIMEOUT = int(os.environ.get("SPOOKD_WATCH_TIMEOUT", "300"))
#: The client gives up on a silent connection after this long.
CLIENT_READ_TIMEOUT = 30


def _ref(configmap: Any) -> ObjectRef:
    meta = configmap.metadata
    return ObjectRef(
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid or "",
        resource_version=meta.resource_version or "",
    )


class ConfigMapWatch:
    """Turns the ConfigMap's versions into configuration events."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str, key: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.name = name
        self.key = key
        self.source = f"{namespace}/{name}:{key}"
        self.resource_version: str | None = None
        self.requests = 0
        self._last: str | object | None = object()  # nothing seen yet

    async def events(self) -> AsyncIterator[SourceEvent]:
        """Yield a version after the first list and after every change, forever."""
        backoff = Backoff()
        forbidden_logged = False
        while True:
            try:
                if self.resource_version is None:
                    event = await self._list()
                    if event is not None:
                        yield event
                async for event in self._watch():
                    yield event
                    backoff.reset()
                backoff.reset()
                forbidden_logged = False
                continue
            except ApiException as exc:
                if exc.status == 410:
                    logger.info("watch expired (410 Gone); listing again", source=self.source)
                    self.resource_version = None
                    continue
                if exc.status in (401, 403):
                    if not forbidden_logged:
                        logger.error(
                            "not allowed to read ConfigMap {namespace}/{name} ({status} {reason}); "
                            "bind the Role `watch-configmaps` (get, list, watch on configmaps) to "
                            "Spookd's ServiceAccount; retrying",
                            namespace=self.namespace,
                            name=self.name,
                            status=exc.status,
                            reason=exc.reason,
                        )
                        forbidden_logged = True
                else:
                    logger.warning(
                        "ConfigMap watch failed: {status} {reason}; reconnecting",
                        status=exc.status,
                        reason=exc.reason,
                        source=self.source,
                    )
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                logger.warning(
                    "ConfigMap watch interrupted: {error}; reconnecting",
                    error=str(exc) or type(exc).__name__,
                    source=self.source,
                )
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                # An answer of a shape this code does not expect must not end the
                # daemon: the devices keep being served while the watch starts over.
                logger.error(
                    "unexpected answer from the API server ({error}); listing again",
                    error=f"{type(exc).__name__}: {exc}",
                    source=self.source,
                )
                self.resource_version = None
            await anyio.sleep(backoff.next_delay())

    async def _list(self) -> SourceEvent | None:
        self.requests += 1
        logger.debug("listing ConfigMap", source=self.source, requests=self.requests)
        listing = await self.core.list_namespaced_config_map(
            self.namespace,
            field_selector=f"metadata.name={self.name}",
            _request_timeout=CLIENT_READ_TIMEOUT,
        )
        self.resource_version = listing.metadata.resource_version
        return await self._version(listing.items[0] if listing.items else None)

    async def _watch(self) -> AsyncIterator[SourceEvent]:
        self.requests += 1
        logger.debug(
            "watching ConfigMap",
            source=self.source,
            resource_version=self.resource_version,
            requests=self.requests,
        )
        watch = Watch()
        timeout = int(WATCH_SERVER_TIMEOUT * random.uniform(1.0, 1.2))
        async with watch.stream(
            self.core.list_namespaced_config_map,
            self.namespace,
            field_selector=f"metadata.name={self.name}",
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _request_timeout=aiohttp.ClientTimeout(
                sock_connect=CLIENT_READ_TIMEOUT, sock_read=timeout + CLIENT_READ_TIMEOUT
            ),
        ) as stream:
            async for raw in stream:
                kind = raw["type"]
                obj = raw["object"]
                # kubernetes-asyncio leaves a BOOKMARK's object a plain dict; the raw
                # object always is one.
                self.resource_version = raw["raw_object"]["metadata"]["resourceVersion"]
                if kind == "BOOKMARK":
                    continue
                event = await self._version(None if kind == "DELETED" else obj)
                if event is not None:
                    yield event

    async def _version(self, configmap: Any | None) -> SourceEvent | None:
        if configmap is None:
            if self._last is None:
                return None
            first = not isinstance(self._last, str)
            self._last = None
            if first:
                logger.warning("ConfigMap does not exist; waiting for it", source=self.source)
            return Deleted(source=self.source, ref=ObjectRef(self.namespace, self.name))
        ref = _ref(configmap)
        text = (configmap.data or {}).get(self.key)
        if text is None:
            keys = sorted(configmap.data or {})
            self._last = ""
            return Rejected(
                errors=[
                    ConfigError(
                        self.source,
                        1,
                        1,
                        "",
                        f"the ConfigMap has no key `{self.key}` (it has: {', '.join(keys) or 'no keys'}); "
                        "put the configuration under that key or set --configmap-key",
                    )
                ],
                source=self.source,
                ref=ref,
            )
        if text == self._last:
            return None
        self._last = text
        event = await parse(text.encode(), self.source)
        if isinstance(event, Accepted):
            return Accepted(config=event.config, source=self.source, ref=ref)
        if isinstance(event, Rejected):
            return Rejected(errors=event.errors, source=self.source, ref=ref)
        return event


async def watch_configmap(
    namespace: str, name: str, key: str, api: client.ApiClient | None = None
) -> AsyncIterator[SourceEvent]:
    """Configuration events for one ConfigMap key, forever."""
    api = api or await connect()
    async for event in ConfigMapWatch(api, namespace, name, key).events():
        yield event
