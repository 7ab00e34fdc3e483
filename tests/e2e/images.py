"""Container images made on this machine, since no registry can be reached.

Both images hold Debian's statically linked busybox (package ``busybox-static``)
with a symlink per applet in ``/bin``: one runs the test deployment's shell, the
other is the pod sandbox ("pause") image, whose entrypoint is a shell that waits
forever, reaps children and exits on SIGTERM or SIGINT.

``oci_archive(...)`` writes an OCI image layout as a tar file that
``ctr -n k8s.io images import`` accepts; the image's name comes from the index's
``io.containerd.image.name`` annotation. Archives are byte-for-byte reproducible.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

__all__ = [
    "BUSYBOX",
    "BUSYBOX_AS_PULLED",
    "PAUSE",
    "busybox_archive",
    "busybox_version",
    "oci_archive",
    "pause_archive",
    "rootfs_layer",
]

BUSYBOX_BINARY = Path("/bin/busybox")

#: The busybox image, by its own name.
BUSYBOX = "localhost/spookd-e2e/busybox:1.35.0-debian"
#: The name the kubelet looks up for deploy/spookd-test-deployment.yaml's ``busybox:1.37``
#: (a tag of :data:`BUSYBOX` in the node's containerd: nothing can be pulled).
BUSYBOX_AS_PULLED = "docker.io/library/busybox:1.37"
#: containerd's ``sandbox_image``: every pod's sandbox container.
PAUSE = "localhost/spookd-e2e/pause:1.35.0-debian"

_PAUSE_SCRIPT = "trap 'exit 0' TERM INT; while :; do sleep 2147483647 & wait $!; done"


def busybox_version() -> str:
    """The first line busybox prints about itself (e.g. ``BusyBox v1.35.0 (Debian ...)``)."""
    out = subprocess.run([str(BUSYBOX_BINARY)], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else "unknown"


def rootfs_layer() -> bytes:
    """An uncompressed tar: /bin/busybox, a symlink per applet, and empty system dirs."""
    applets = subprocess.run(
        [str(BUSYBOX_BINARY), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("bin", "dev", "etc", "proc", "sys", "tmp", "var"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        data = BUSYBOX_BINARY.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in sorted(set(applets) - {"busybox"}):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(link)
        for name, text in (
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"),
            ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ):
            raw = text.encode()
            entry = tarfile.TarInfo(name)
            entry.size, entry.mode = len(raw), 0o644
            tar.addfile(entry, io.BytesIO(raw))
    return buffer.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo("blobs/sha256/" + digest.removeprefix("sha256:"))
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))
    return digest


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def oci_archive(path: Path, name: str, *, entrypoint: list[str] | None, cmd: list[str] | None = None) -> Path:
    """Write an OCI image layout tar for ``name`` (one busybox layer) to ``path``."""
    layer = rootfs_layer()
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": entrypoint,
            "Cmd": cmd,
            "Env": ["PATH=/bin"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": busybox_version()}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        _blob(tar, layer)
        config_raw = _json(config)
        config_digest = _blob(tar, config_raw)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config_raw),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        }
        manifest_raw = _json(manifest)
        manifest_digest = _blob(tar, manifest_raw)
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": len(manifest_raw),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                    },
                }
            ],
        }
        for member, raw in (
            ("oci-layout", _json({"imageLayoutVersion": "1.0.0"})),
            ("index.json", _json(index)),
        ):
            info = tarfile.TarInfo(member)
            info.size, info.mode = len(raw), 0o644
            tar.addfile(info, io.BytesIO(raw))
    return path


def busybox_archive(directory: Path) -> Path:
    """The test deployment's image (no entrypoint: the pod gives the command)."""
    return oci_archive(directory / "busybox.tar", BUSYBOX, entrypoint=None, cmd=["sh"])


def pause_archive(directory: Path) -> Path:
    """The sandbox image: a shell that waits forever and exits on SIGTERM/SIGINT."""
    return oci_archive(directory / "pause.tar", PAUSE, entrypoint=["/bin/sh", "-c", _PAUSE_SCRIPT])
