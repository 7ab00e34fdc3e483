"""Prepares and unprepares claims: reads them, writes CDI specs, keeps the checkpoint (the I/O shell).

What a claim's allocation means is decided in ``spookd.cdi`` (pure); this module
reads from the API, writes files and remembers what it prepared. A prepared claim is
answered from the checkpoint from then on (idempotent, and unchanged by later
configuration edits or a Spookd restart) until the kubelet unprepares it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import anyio
import msgspec
from loguru import logger

from spookd import cdi
from spookd.config.model import Device

CHECKPOINT_FILE = "checkpoint.json"


class ClaimSource(Protocol):
    """Where ResourceClaims and ResourceSlices are read (``spookd.kube.draclaims.ClaimReader``)."""

    async def claim(self, namespace: str, name: str) -> dict[str, Any]:
        """One ResourceClaim object; PrepareError when it cannot be read."""

    async def slices(self, driver: str, pool: str) -> list[dict[str, Any]]:
        """The ResourceSlices of one pool of ``driver``; PrepareError when they cannot be read."""


class ClaimRef(msgspec.Struct, frozen=True):
    """A claim as the kubelet names it."""

    namespace: str
    uid: str
    name: str


def _write_atomically(path: Path, data: bytes) -> None:
    # A dot name without .json/.yaml: the runtime's CDI watcher never reads a half-written spec.
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)


class Preparer:
    """This node's prepared claims: one CDI spec file per claim, one checkpoint file."""

    def __init__(
        self, driver: str, node_name: str, cdi_dir: Path, state_dir: Path, reader: ClaimSource
    ) -> None:
        self.driver = driver
        self.node_name = node_name
        self.cdi_dir = cdi_dir
        self.checkpoint_path = state_dir / CHECKPOINT_FILE
        self.reader = reader
        #: this node's devices from the newest accepted configuration; None before the first
        self.node_devices: Mapping[str, Mapping[str, Device]] | None = None
        self._claims: dict[str, cdi.PreparedClaim] = {}
        self._lock = anyio.Lock()

    @property
    def prepared(self) -> dict[str, cdi.PreparedClaim]:
        """The prepared claims by UID (a copy)."""
        return dict(self._claims)

    def load(self) -> None:
        """Read the checkpoint and write back every prepared claim's CDI spec (a reboot empties /var/run)."""
        try:
            data = self.checkpoint_path.read_bytes()
        except FileNotFoundError:
            data = b""
        if data:
            try:
                self._claims = dict(cdi.decode_checkpoint(data, str(self.checkpoint_path)).claims)
            except cdi.PrepareError as exc:
                logger.error("{error}", error=str(exc))
                with contextlib.suppress(OSError):
                    self.checkpoint_path.replace(self.checkpoint_path.with_suffix(".json.unreadable"))
        self.cdi_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        for claim in self._claims.values():
            try:
                self._write_spec(claim)
            except cdi.PrepareError as exc:
                logger.error("{error}", error=str(exc))
        logger.info("DRA checkpoint read", path=str(self.checkpoint_path), claims=len(self._claims))

    async def prepare(self, claims: Sequence[ClaimRef]) -> dict[str, cdi.PreparedClaim | str]:
        """Prepare each claim: its PreparedClaim, or the error text for the kubelet."""
        answers: dict[str, cdi.PreparedClaim | str] = {}
        async with self._lock:
            before = dict(self._claims)
            for ref in claims:
                try:
                    answers[ref.uid] = await self._prepare_one(ref)
                except cdi.PrepareError as exc:
                    logger.warning("claim not prepared: {error}", error=str(exc), claim=ref.uid)
                    answers[ref.uid] = str(exc)
            if self._claims != before:
                self._save(answers, before)
        return answers

    async def _prepare_one(self, ref: ClaimRef) -> cdi.PreparedClaim:
        kept = self._claims.get(ref.uid)
        if kept is not None:
            self._write_spec(kept)
            return kept
        if self.node_devices is None:
            raise cdi.PrepareError(
                f"ResourceClaim {ref.namespace}/{ref.name}: no valid configuration loaded yet "
                "(see the configuration errors in Spookd's log); the kubelet retries"
            )
        claim = await self.reader.claim(ref.namespace, ref.name)
        uid = (claim.get("metadata") or {}).get("uid")
        if uid != ref.uid:
            raise cdi.PrepareError(
                f"ResourceClaim {ref.namespace}/{ref.name} has UID {uid}, not {ref.uid}: "
                "it was deleted and created again"
            )
        allocated = cdi.allocated_devices(claim, self.driver)
        identities = {
            pool: cdi.slice_identities(await self.reader.slices(self.driver, pool), self.driver, pool)
            for pool in sorted({a.pool for a in allocated})
        }
        pairs = cdi.resolve(claim, allocated, identities, self.node_devices, self.node_name)
        prepared = cdi.prepare_claim(self.driver, ref.uid, ref.namespace, ref.name, pairs)
        self._write_spec(prepared)
        self._claims[ref.uid] = prepared
        logger.info(
            "claim prepared",
            claim=f"{ref.namespace}/{ref.name}",
            uid=ref.uid,
            devices=len(prepared.devices),
            spec=str(self.cdi_dir / prepared.spec_file),
        )
        return prepared

    async def unprepare(self, claims: Sequence[ClaimRef]) -> dict[str, str]:
        """Remove each claim's CDI spec and forget it: ``{uid: error text or ""}``; unknown claims succeed."""
        answers: dict[str, str] = {}
        async with self._lock:
            before = dict(self._claims)
            for ref in claims:
                path = self.cdi_dir / cdi.spec_file_name(self.driver, ref.uid)
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    answers[ref.uid] = f"cannot remove CDI spec {path}: {exc.strerror}"
                    continue
                self._claims.pop(ref.uid, None)
                answers[ref.uid] = ""
                logger.info("claim unprepared", claim=f"{ref.namespace}/{ref.name}", uid=ref.uid)
            if self._claims != before and not self._save(answers, before):
                # Kept in memory and in the old checkpoint: the kubelet's retry saves again.
                for uid in set(before) - set(self._claims):
                    answers[uid] = f"cannot write the DRA checkpoint {self.checkpoint_path}"
                self._claims = dict(before)
        return answers

    def _write_spec(self, claim: cdi.PreparedClaim) -> None:
        path = self.cdi_dir / claim.spec_file
        data = claim.spec.encode()
        try:
            with contextlib.suppress(FileNotFoundError):
                if path.read_bytes() == data:
                    return
            _write_atomically(path, data)
        except OSError as exc:
            raise cdi.PrepareError(
                f"cannot write CDI spec {path}: {exc.strerror}; check that --cdi-dir is writable"
            ) from None

    def _save(self, answers: dict[str, Any], before: Mapping[str, cdi.PreparedClaim]) -> bool:
        """Write the checkpoint; on failure turn newly prepared answers into errors and say False."""
        try:
            _write_atomically(
                self.checkpoint_path, cdi.encode_checkpoint(cdi.Checkpoint(claims=self._claims))
            )
        except OSError as exc:
            # Without a checkpoint a restart forgets these claims: refuse them now, the kubelet retries.
            message = f"cannot write the DRA checkpoint {self.checkpoint_path}: {exc.strerror}"
            logger.error("{error}", error=message)
            for uid, answer in answers.items():
                if isinstance(answer, cdi.PreparedClaim) and uid not in before:
                    answers[uid] = message
                    self._claims.pop(uid, None)
            return False
        return True
