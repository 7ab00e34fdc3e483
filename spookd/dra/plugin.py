"""The kubelet DRA plugin: the registration socket for the plugin watcher and the DRA v1 service.

The kubelet's plugin watcher sees ``<kubelet-dir>/plugins_registry/<driver>-reg.sock``
appear, asks ``GetInfo`` (type ``DRAPlugin``, the driver name, the endpoint, the
services served there: ``v1.DRAPlugin``) and reports the outcome through
``NotifyRegistrationStatus``; then it calls ``NodePrepareResources`` and
``NodeUnprepareResources`` on the endpoint ``<kubelet-dir>/plugins/<driver>/dra.sock``.
The endpoint is bound before the registration socket, so the kubelet never dials a
socket that is not served yet. A socket that disappears (someone cleaned the
directory) is bound again within :data:`RECHECK` seconds.
"""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import grpclib.server
from loguru import logger

from spookd import cdi
from spookd._proto import pluginregistration as reg
from spookd._proto.k8s.io.kubelet.pkg.apis.dra import v1 as dra
from spookd.dirwatch import FileIdentity, file_identity
from spookd.dra.preparer import ClaimRef, Preparer

PLUGIN_TYPE = "DRAPlugin"
#: The kubelet's name for the DRA v1 gRPC service (k8s.io/kubelet/pkg/apis/dra/v1.DRAPluginService).
DRA_SERVICE = "v1.DRAPlugin"
#: Seconds between checks that both sockets are still there.
RECHECK = 1.0


class RegistrationService(reg.RegistrationBase):
    """What the plugin watcher asks: who we are, and how registration went."""

    def __init__(self, driver: str, endpoint: Path) -> None:
        self.driver = driver
        self.endpoint = endpoint
        self.registered = False
        self.error = ""

    async def get_info(self, message: reg.InfoRequest) -> reg.PluginInfo:
        return reg.PluginInfo(
            type=PLUGIN_TYPE, name=self.driver, endpoint=str(self.endpoint), supported_versions=[DRA_SERVICE]
        )

    async def notify_registration_status(
        self, message: reg.RegistrationStatus
    ) -> reg.RegistrationStatusResponse:
        self.registered = message.plugin_registered
        self.error = message.error
        if message.plugin_registered:
            logger.info("registered with the kubelet as a DRA driver", driver=self.driver)
        else:
            logger.error(
                "the kubelet refused the DRA driver: {error}",
                error=message.error or "(no reason)",
                driver=self.driver,
            )
        return reg.RegistrationStatusResponse()


def _refs(claims: Sequence[dra.Claim]) -> list[ClaimRef]:
    return [ClaimRef(c.namespace, c.uid, c.name) for c in claims]


class DraService(dra.DraPluginBase):
    """NodePrepareResources / NodeUnprepareResources over the Preparer: one answer per claim."""

    def __init__(self, preparer: Preparer) -> None:
        self.preparer = preparer

    async def node_prepare_resources(
        self, message: dra.NodePrepareResourcesRequest
    ) -> dra.NodePrepareResourcesResponse:
        answers = await self.preparer.prepare(_refs(message.claims))
        claims: dict[str, dra.NodePrepareResourceResponse] = {}
        for uid, answer in answers.items():
            if isinstance(answer, str):
                claims[uid] = dra.NodePrepareResourceResponse(error=answer)
                continue
            devices = [
                dra.Device(
                    request_names=list(d.request_names),
                    pool_name=d.pool_name,
                    device_name=d.device_name,
                    cdi_device_ids=list(d.cdi_device_ids),
                )
                for d in answer.devices
            ]
            claims[uid] = dra.NodePrepareResourceResponse(devices=devices)
        return dra.NodePrepareResourcesResponse(claims=claims)

    async def node_unprepare_resources(
        self, message: dra.NodeUnprepareResourcesRequest
    ) -> dra.NodeUnprepareResourcesResponse:
        answers = await self.preparer.unprepare(_refs(message.claims))
        return dra.NodeUnprepareResourcesResponse(
            claims={uid: dra.NodeUnprepareResourceResponse(error=error) for uid, error in answers.items()}
        )


class _Socket:
    """One grpclib server on one Unix socket path, bound again when its file disappears."""

    def __init__(self, path: Path, handlers: Callable[[], list[Any]]) -> None:
        self.path = path
        self.handlers = handlers
        self.server: grpclib.server.Server | None = None
        self.identity: FileIdentity | None = None

    async def bind(self) -> None:
        await self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(self.path.lstat().st_mode):
                raise OSError(f"{self.path} is a directory; remove it so Spookd can bind")
            self.path.unlink()
        server = grpclib.server.Server(self.handlers())
        await server.start(path=str(self.path))
        self.server, self.identity = server, file_identity(self.path)
        logger.info("DRA socket serving", path=str(self.path))

    @property
    def gone(self) -> bool:
        return file_identity(self.path) != self.identity

    async def close(self) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        server.close()
        with anyio.move_on_after(2):
            await server.wait_closed()
        if self.identity is not None and file_identity(self.path) == self.identity:
            with contextlib.suppress(OSError):
                self.path.unlink()


class DraPlugin:
    """The node's DRA driver: both sockets, from start until cancelled."""

    def __init__(self, driver: str, kubelet_dir: Path, preparer: Preparer) -> None:
        self.driver = driver
        self.preparer = preparer
        self.endpoint = Path(cdi.endpoint_socket(str(kubelet_dir), driver))
        self.registration = RegistrationService(driver, self.endpoint)
        self.service = DraService(preparer)
        self._sockets = (
            _Socket(self.endpoint, lambda: [self.service]),
            _Socket(Path(cdi.registration_socket(str(kubelet_dir), driver)), lambda: [self.registration]),
        )

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Read the checkpoint, bind the endpoint, then the registration socket; keep them bound."""
        self.preparer.load()
        try:
            for socket in self._sockets:
                await socket.bind()
            task_status.started()
            while True:
                await anyio.sleep(RECHECK)
                if any(s.gone for s in self._sockets):
                    logger.warning("a DRA socket disappeared: binding both again", driver=self.driver)
                    self.registration.registered = False
                    for socket in self._sockets:
                        await socket.bind()
        finally:
            with anyio.CancelScope(shield=True):
                for socket in reversed(self._sockets):
                    await socket.close()
