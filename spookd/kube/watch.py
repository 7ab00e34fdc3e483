"""LIST then WATCH one collection of the Kubernetes API, for as long as it runs.

The one mechanism every reader of the API uses (the ConfigMap source, the Lease
claims): a LIST gives the current objects and a resourceVersion; a WATCH from there
gives every change; bookmarks move the resourceVersion on; a watch the server ends
(its timeout, a little randomised as client-go does) is resumed from the last
resourceVersion without a new LIST; ``410 Gone`` (the version was compacted away)
starts over with a LIST. Every request has a client read timeout; failures retry
with capped exponential backoff and jitter. An answer of an unexpected shape is
logged and answered with a new LIST: it never ends the daemon.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.watch import Watch
from loguru import logger

from spookd.kube.client import Backoff

#: The API server ends each watch after this long (a little randomised, as client-go does).
#: (spookd.settings.Tuning.watch_timeout, SPOOKD_WATCH_TIMEOUT, is what `spookd run` passes in.)
WATCH_SERVER_TIMEOUT = 300
#: The client gives up on a silent connection after this long.
CLIENT_READ_TIMEOUT = 30

ListCall = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Listed:
    """A full listing: every object (kubernetes-asyncio models) at one resourceVersion."""

    items: list[Any]
    resource_version: str


@dataclass(frozen=True)
class Changed:
    """One change seen by a watch: ADDED, MODIFIED or DELETED, the model and its raw JSON."""

    kind: str
    obj: Any
    raw: dict[str, Any]


WatchEvent = Listed | Changed


class ListWatch:
    """LIST + WATCH of the objects one kubernetes-asyncio ``list_*`` call returns."""

    def __init__(
        self,
        list_call: ListCall,
        *args: Any,
        what: str,
        forbidden: str = "",
        server_timeout: int | None = None,
        read_timeout: float = CLIENT_READ_TIMEOUT,
        watch_factory: Callable[[], Watch] = Watch,
        backoff: Backoff | None = None,
        **selectors: str,
    ) -> None:
        self.list_call = list_call
        self.args = args
        self.selectors = selectors
        #: Names the collection in logs: ``listing {what}``, ``watching {what}``.
        self.what = what
        #: Logged once (as an error) while the API answers 401/403; a sentence with the fix.
        self.forbidden = forbidden or f"not allowed to read {what}"
        self.server_timeout = WATCH_SERVER_TIMEOUT if server_timeout is None else server_timeout
        self.read_timeout = read_timeout
        self.watch_factory = watch_factory
        self.backoff = backoff or Backoff()
        #: True from a successful LIST, or an event of a resumed watch, until the next
        #: failure: what the caller saw since then is all there was.
        self.in_sync = False
        self.resource_version: str | None = None
        #: LIST and WATCH requests sent so far.
        self.requests = 0
        #: Fields for every log line (for example the ConfigMap's ``source``).
        self.log_fields: dict[str, Any] = {}

    async def events(self) -> AsyncIterator[WatchEvent]:
        """A Listed after every LIST, a Changed after every change, forever."""
        forbidden_logged = False
        while True:
            try:
                if self.resource_version is None:
                    yield await self.list()
                started = time.monotonic()
                seen = False
                async for event in self.watch():
                    seen = True
                    yield event
                    self.backoff.reset()
                forbidden_logged = False
                if seen or time.monotonic() - started >= 1.0:
                    self.backoff.reset()
                    continue
                # A watch the server ends at once, again and again, must not become a
                # storm of requests: back off as after a failure.
            except ApiException as exc:
                if exc.status == 410:
                    logger.info("watch expired (410 Gone); listing again", what=self.what, **self.log_fields)
                    self.resource_version = None
                    continue
                if exc.status in (401, 403):
                    if not forbidden_logged:
                        logger.error(
                            "{message} ({status} {reason}); retrying",
                            message=self.forbidden,
                            status=exc.status,
                            reason=exc.reason,
                            **self.log_fields,
                        )
                        forbidden_logged = True
                else:
                    logger.warning(
                        "{what} watch failed: {status} {reason}; reconnecting",
                        what=self.what,
                        status=exc.status,
                        reason=exc.reason,
                        **self.log_fields,
                    )
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                logger.warning(
                    "{what} watch interrupted: {error}; reconnecting",
                    what=self.what,
                    error=str(exc) or type(exc).__name__,
                    **self.log_fields,
                )
            except Exception as exc:
                # An answer of a shape this code does not expect must not end the
                # daemon: what it serves stays served while the watch starts over.
                # (kubernetes-asyncio raises a bare Exception for a malformed line.)
                logger.error(
                    "unexpected answer from the API server ({error}); listing again",
                    error=f"{type(exc).__name__}: {exc}",
                    what=self.what,
                    **self.log_fields,
                )
                self.resource_version = None
            self.in_sync = False
            await anyio.sleep(self.backoff.next_delay())

    async def list(self) -> Listed:
        """One LIST; the watch resumes from its resourceVersion."""
        self.requests += 1
        logger.debug("listing {what}", what=self.what, requests=self.requests, **self.log_fields)
        listing = await self.list_call(*self.args, **self.selectors, _request_timeout=self.read_timeout)
        resource_version = listing.metadata.resource_version
        if not isinstance(resource_version, str) or not resource_version:
            raise ValueError(f"the {self.what} listing carries no resourceVersion")
        self.resource_version = resource_version
        self.in_sync = True
        return Listed(list(listing.items or []), resource_version)

    async def watch(self) -> AsyncIterator[Changed]:
        """One WATCH from the current resourceVersion, until the server ends it."""
        self.requests += 1
        logger.debug(
            "watching {what}",
            what=self.what,
            resource_version=self.resource_version,
            requests=self.requests,
            **self.log_fields,
        )
        timeout = int(self.server_timeout * random.uniform(1.0, 1.2))
        watch = self.watch_factory()
        async with watch.stream(
            self.list_call,
            *self.args,
            **self.selectors,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _request_timeout=aiohttp.ClientTimeout(
                sock_connect=self.read_timeout, sock_read=timeout + self.read_timeout
            ),
        ) as stream:
            async for raw in stream:
                kind = raw["type"]
                # kubernetes-asyncio leaves a BOOKMARK's object a plain dict; the raw
                # object always is one.
                resource_version = raw["raw_object"]["metadata"]["resourceVersion"]
                if not isinstance(resource_version, str) or not resource_version:
                    raise ValueError(f"a {self.what} watch event carries no resourceVersion")
                self.resource_version = resource_version
                self.in_sync = True
                if kind == "BOOKMARK":
                    continue
                if kind not in ("ADDED", "MODIFIED", "DELETED"):
                    raise ValueError(f"a {self.what} watch event of unknown type {kind!r}")
                yield Changed(kind, raw["object"], raw["raw_object"])
