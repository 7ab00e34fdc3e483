"""The ConfigMap source: list then watch one ConfigMap through the API (SPEC §3).

kubernetes-asyncio is imported only here, so the file source never pays its
start-up time and memory. The shared LIST + WATCH (spookd.kube.watch) asks for the
one object by field selector, resumes from the last resourceVersion (bookmarks
included), always sets a server timeout and a client read timeout, relists on 410
Gone, and reconnects with capped exponential backoff and jitter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.watch import Watch
from loguru import logger

from spookd.config.model import ConfigError, ConfigInvalid
from spookd.config.versions import Accepted, Deleted, ObjectRef, Rejected, SourceEvent
from spookd.kube.client import connect
from spookd.kube.watch import CLIENT_READ_TIMEOUT, WATCH_SERVER_TIMEOUT, Listed, ListWatch, WatchEvent
from spookd.sources.parsing import parse


def _ref(configmap: Any) -> ObjectRef:
    meta = configmap.metadata
    return ObjectRef(
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid or "",
        resource_version=meta.resource_version or "",
    )


def _missing_key(source: str, key: str, configmap: Any) -> ConfigError:
    keys = sorted(configmap.data or {})
    return ConfigError(
        source,
        1,
        1,
        "",
        f"the ConfigMap has no key `{key}` (it has: {', '.join(keys) or 'no keys'}); "
        "put the configuration under that key or set --configmap-key",
    )


def _new_watch() -> Watch:
    # Looked up at each watch, so a test can put recorded events in its place.
    return Watch()


class ConfigMapWatch:
    """Turns the ConfigMap's versions into configuration events."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        key: str,
        watch_timeout: int = WATCH_SERVER_TIMEOUT,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.name = name
        self.key = key
        self.source = f"{namespace}/{name}:{key}"
        self.list_watch = ListWatch(
            self.core.list_namespaced_config_map,
            namespace,
            what="ConfigMap",
            forbidden=(
                f"not allowed to read ConfigMap {namespace}/{name}; bind the Role `watch-configmaps` "
                "(get, list, watch on configmaps) to Spookd's ServiceAccount"
            ),
            server_timeout=watch_timeout,
            read_timeout=CLIENT_READ_TIMEOUT,
            watch_factory=_new_watch,
            field_selector=f"metadata.name={name}",
        )
        self.list_watch.log_fields = {"source": self.source}
        self._last: str | object | None = object()  # nothing seen yet

    @property
    def resource_version(self) -> str | None:
        """Where the next watch resumes (None: list first)."""
        return self.list_watch.resource_version

    @resource_version.setter
    def resource_version(self, value: str | None) -> None:
        self.list_watch.resource_version = value

    @property
    def requests(self) -> int:
        """LIST and WATCH requests sent so far."""
        return self.list_watch.requests

    async def events(self) -> AsyncIterator[SourceEvent]:
        """Yield a version after the first list and after every change, forever."""
        async for change in self.list_watch.events():
            event = await self._event(change)
            if event is not None:
                yield event

    async def _watch(self) -> AsyncIterator[SourceEvent]:
        """One watch request's configuration events."""
        async for change in self.list_watch.watch():
            event = await self._event(change)
            if event is not None:
                yield event

    async def _event(self, change: WatchEvent) -> SourceEvent | None:
        if isinstance(change, Listed):
            return await self._version(change.items[0] if change.items else None)
        return await self._version(None if change.kind == "DELETED" else change.obj)

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
            self._last = ""
            errors = [_missing_key(self.source, self.key, configmap)]
            return Rejected(errors=errors, source=self.source, ref=ref)
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
    namespace: str,
    name: str,
    key: str,
    api: client.ApiClient | None = None,
    watch_timeout: int = WATCH_SERVER_TIMEOUT,
) -> AsyncIterator[SourceEvent]:
    """Configuration events for one ConfigMap key, forever."""
    api = api or await connect()
    async for event in ConfigMapWatch(api, namespace, name, key, watch_timeout).events():
        yield event


async def read_configmap(namespace: str, name: str, key: str) -> str:
    """The text under ``key`` of one ConfigMap, read once (``spookd validate --configmap``).

    Raise ConfigInvalid with one error naming the ConfigMap when it cannot be read.
    """
    source = f"{namespace}/{name}:{key}"
    try:
        api = await connect()
    except ConnectionError as exc:
        raise ConfigInvalid([ConfigError(source, 1, 1, "", str(exc))]) from exc
    problem: str
    async with api:
        try:
            configmap = await client.CoreV1Api(api).read_namespaced_config_map(
                name, namespace, _request_timeout=CLIENT_READ_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                problem = f"ConfigMap {namespace}/{name} does not exist; check the namespace and the name"
            elif exc.status in (401, 403):
                problem = (
                    f"not allowed to read ConfigMap {namespace}/{name} ({exc.status} {exc.reason}); "
                    "reading it needs `get` on configmaps in that namespace"
                )
            else:
                problem = f"the API server answered {exc.status} {exc.reason} to reading {namespace}/{name}"
        except (aiohttp.ClientError, OSError) as exc:
            problem = f"cannot reach the Kubernetes API to read ConfigMap {namespace}/{name}: {exc}"
        else:
            text = (configmap.data or {}).get(key)
            if text is None:
                raise ConfigInvalid([_missing_key(source, key, configmap)])
            return str(text)
    raise ConfigInvalid([ConfigError(source, 1, 1, "", problem)])
