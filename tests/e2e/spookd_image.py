"""Spookd's image, built from the repository's Containerfile with buildah.

No registry is reachable here, so the Containerfile's ``BASE_IMAGE`` is made
locally: ``mmdebstrap`` writes a Debian bookworm root filesystem (minbase plus
python3, python3-venv and ca-certificates, documentation and locales left out),
``buildah from scratch`` + mount + untar + commit turns it into
:data:`BASE`. The Containerfile is then built unchanged with
``--build-arg BASE_IMAGE=<that>`` (``--isolation chroot --network host``, vfs
storage), pip reaching the package index from inside the build with this machine's
CA bundle mounted read-only at the path the Containerfile's ``PIP_CERT`` names.
The result is pushed to an OCI archive named :data:`IMAGE` — the image
deploy/spookd-device-plugin.yaml and the chart name — for ``ctr images import``.

buildah keeps its own storage under ``/var/lib/spookd-e2e/buildah``, so the base
image is made once per machine; a later run builds only the Containerfile (with
``--layers=false``: on vfs, cached layers cost more time than a fresh pip install).
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from e2e.host import E2EError, system_environment, tail

__all__ = ["BASE", "IMAGE", "Built", "build"]

REPO = Path(__file__).resolve().parents[2]
#: The locally made base: what python:3.11-slim is to a build with a registry.
BASE = "localhost/spookd-e2e/debian-python:bookworm"
#: What the manifest and the chart run by default (Chart appVersion 0.1.0).
IMAGE = "ghcr.io/spookd/spookd:0.1.0"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
#: Left out of the base: no one reads them in a container.
_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")


@dataclass
class Built:
    """The archive to import and what it took."""

    archive: Path
    #: The image's size as ``buildah images`` reports it (e.g. ``273 MB``).
    size: str
    #: Size of the archive ctr imports (gzip-compressed layers, bytes).
    archive_size: int
    timings: dict[str, float] = field(default_factory=dict)


class _Buildah:
    def __init__(self, root: Path, runroot: Path, log: Path) -> None:
        self.root, self.runroot, self.log = root, runroot, log

    def __call__(self, *args: str, timeout: float = 1800.0) -> str:
        argv = [
            "buildah", "--root", str(self.root), "--runroot", str(self.runroot),
            "--storage-driver", "vfs", *args,
        ]  # fmt: skip
        with self.log.open("a") as out:
            out.write(f"\n$ {' '.join(argv)}\n")
        done = subprocess.run(
            argv, capture_output=True, text=True, check=False, timeout=timeout, env=_env(self.runroot)
        )
        with self.log.open("a") as out:
            out.write(done.stdout + done.stderr)
        if done.returncode != 0:
            raise E2EError(f"{' '.join(argv)} failed with {done.returncode}:\n{tail(self.log)}")
        return done.stdout

    def exists(self, image: str) -> bool:
        argv = [
            "buildah",
            "--root",
            str(self.root),
            "--runroot",
            str(self.runroot),
            "--storage-driver",
            "vfs",
        ]
        done = subprocess.run(
            [*argv, "inspect", "--type", "image", image],
            capture_output=True,
            check=False,
            env=_env(self.runroot),
        )
        return done.returncode == 0


def _env(runroot: Path) -> dict[str, str]:
    # buildah keeps its temporary files (the build context's copies) beside its run root.
    tmp = runroot / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return system_environment({"TMPDIR": str(tmp), "BUILDAH_ISOLATION": "chroot"})


def build(work: Path, runroot: Path, log: Path) -> Built:
    """The base (once), then the Containerfile; an OCI archive of :data:`IMAGE` in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    buildah = _Buildah(work / "storage", runroot, log)
    timings: dict[str, float] = {}
    if not buildah.exists(BASE):
        began = time.monotonic()
        _make_base(buildah, work, log)
        timings["image base (mmdebstrap + commit)"] = time.monotonic() - began
    if not CA_BUNDLE.is_file():
        raise E2EError(f"no CA bundle at {CA_BUNDLE}: pip inside the build could not verify the index")
    began = time.monotonic()
    buildah(
        "bud", "--isolation", "chroot", "--network", "host", "--layers=false",
        "--build-arg", f"BASE_IMAGE={BASE}",
        "--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro",
        "--file", str(REPO / "Containerfile"), "--tag", IMAGE, str(REPO),
    )  # fmt: skip
    timings["image build (Containerfile)"] = time.monotonic() - began
    began = time.monotonic()
    archive = work / "spookd.tar"
    archive.unlink(missing_ok=True)
    buildah("push", IMAGE, f"oci-archive:{archive}:{IMAGE}")
    timings["image push to archive"] = time.monotonic() - began
    info = json.loads(buildah("images", "--json", IMAGE))
    size = str(info[0].get("size", "?")) if info else "?"
    return Built(archive, size, archive.stat().st_size, timings)


def _make_base(buildah: _Buildah, work: Path, log: Path) -> None:
    rootfs = work / f"base-{SUITE}.tar"
    argv = [
        "mmdebstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
        *(f"--dpkgopt=path-exclude={pattern}" for pattern in _EXCLUDES),
        # The copyright files stay: the image carries the packages' licences.
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        SUITE, str(rootfs), MIRROR,
    ]  # fmt: skip
    with log.open("ab") as out:
        done = subprocess.run(
            argv, stdout=out, stderr=subprocess.STDOUT, check=False, env=system_environment(), timeout=1200
        )
    if done.returncode != 0:
        raise E2EError(f"{' '.join(argv)} failed with {done.returncode}:\n{tail(log)}")
    container = buildah("from", "scratch").strip()
    try:
        mount = Path(buildah("mount", container).strip())
        subprocess.run(["tar", "-C", str(mount), "-xf", str(rootfs)], check=True)
        buildah("umount", container)
        buildah(
            "config",
            "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--cmd", "/usr/bin/python3",
            "--label", f"org.opencontainers.image.description=Debian {SUITE} minbase + python3 (mmdebstrap)",
            container,
        )  # fmt: skip
        buildah("commit", "--rm", container, BASE)
    except BaseException:
        subprocess.run(
            ["buildah", "--root", str(buildah.root), "--runroot", str(buildah.runroot), "rm", container],
            capture_output=True,
            check=False,
            env=_env(buildah.runroot),
        )
        raise
    finally:
        rootfs.unlink(missing_ok=True)
