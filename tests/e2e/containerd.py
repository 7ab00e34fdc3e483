"""containerd 2, built from its Go module, with Debian's runc, as the node's runtime.

``build()`` runs ``go install -tags no_btrfs github.com/containerd/containerd/v2/cmd/...``
(the version stamped with ``-ldflags -X``, as a release build does)
for ``containerd``, ``containerd-shim-runc-v2`` and ``ctr`` at :data:`VERSION` into
``tests/go/.bin/containerd-<version>/`` (no btrfs headers here; the walkthrough uses
overlayfs). containerd finds the shim on its PATH, the shim finds ``/usr/sbin/runc``.

Its own root (``/var/lib/spookd-e2e/containerd``), state and socket
(``/run/spookd-e2e/containerd/containerd.sock``), so it never meets a containerd the
machine may run already. Configuration (version 3), each line for a reason:

- ``pinned_images.sandbox``: the locally built pause image (nothing can be pulled);
- ``restrict_oom_score_adj = true``: this sandbox has no CAP_SYS_RESOURCE, so runc
  cannot lower a container's oom_score_adj (the kubelet asks -998 for sandboxes,
  -997 for Guaranteed pods); containerd then clamps the value to its own (0), as for
  rootless containerd. Without it every pod fails with runc's
  ``nsexec: failed to update /proc/self/oom_score_adj: Permission denied``;
- ``netns_mounts_under_state_dir``: pod network namespaces live under its own state
  directory, so that a crashed run's can be found and unmounted;
- ``cdi_spec_dirs``: CDI is on in containerd 2 (no switch); the node's ``/etc/cdi``
  and ``/run/cdi`` are its own directories (bind mounts in the node's namespace);
- cgroupfs (not systemd) cgroups: there is no systemd here;
- CNI: a ``bridge`` network with ``host-local`` addresses, the bridge the pods'
  gateway (the kubelet probes pods through it, pods reach Services through it), no
  masquerade, inside the node's network namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from support import gobuild

from e2e import images
from e2e.host import E2EError, NodeNamespace, Process, system_environment, tail, wait_for

__all__ = ["BRIDGE", "POD_SUBNET", "VERSION", "Containerd", "build"]

BRIDGE = "spke2e0"
POD_SUBNET = "10.244.0.0/24"
CNI_BIN = Path("/usr/lib/cni")
VERSION = "v2.4.2"
MODULE = "github.com/containerd/containerd/v2"
PROGRAMS = ("containerd", "containerd-shim-runc-v2", "ctr")

_CONFIG = """\
version = 3
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{pause}"
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  cdi_spec_dirs = ["/etc/cdi", "/run/cdi"]
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{cni_conf}"
"""


def build(log: Path) -> Path:
    """``go install`` containerd, its runc shim and ctr at VERSION; the directory they are in."""
    target = gobuild.BIN_DIR / f"containerd-{VERSION}"
    if all((target / program).is_file() for program in PROGRAMS):
        return target
    staging = gobuild.BIN_DIR / f".containerd-{VERSION}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    argv = [
        gobuild.go_binary(), "install", "-tags", "no_btrfs",
        # As a release build does (the module's own says "2.4.2+unknown").
        f"-ldflags=-X {MODULE}/version.Version={VERSION.removeprefix('v')}",
        *(f"{MODULE}/cmd/{program}@{VERSION}" for program in PROGRAMS),
    ]  # fmt: skip
    env = system_environment({"GOBIN": str(staging), "GOFLAGS": "-buildvcs=false"})
    with log.open("ab") as out:
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, check=False, cwd=staging)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise E2EError(f"{' '.join(argv)} failed with {done.returncode}:\n{tail(log)}")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


class Containerd:
    """A containerd process with the walkthrough's images imported."""

    def __init__(self, root: Path, state: Path, logs: Path, pid_dir: Path, namespace: NodeNamespace) -> None:
        self.root = root
        self.state = state
        self.socket = state / "containerd.sock"
        self.config = root.parent / "containerd.toml"
        self.cni_conf = root.parent / "cni" / "net.d"
        self.cni_data = root.parent / "cni" / "ipam"
        self.image_dir = root.parent / "images"
        self.log = logs / "containerd.log"
        self.namespace = namespace
        self.pid_dir = pid_dir
        self.process: Process | None = None
        #: The directory of containerd, its shim and ctr (set by ``build()``'s caller).
        self.bin_dir: Path | None = None

    @property
    def endpoint(self) -> str:
        """The CRI endpoint for the kubelet."""
        return f"unix://{self.socket}"

    def write_config(self) -> None:
        """containerd's configuration and the CNI network."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.cni_conf.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            _CONFIG.format(
                root=self.root,
                state=self.state,
                socket=self.socket,
                pause=images.PAUSE,
                cni_bin=CNI_BIN,
                cni_conf=self.cni_conf,
            )
        )
        network = {
            "cniVersion": "1.0.0",
            "name": "spookd-e2e",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    # The pods' default route: Services (10.0.0.0/16) are reached through the node.
                    "isDefaultGateway": True,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET}]],
                        "dataDir": str(self.cni_data),
                    },
                }
            ],
        }
        (self.cni_conf / "10-spookd-e2e.conflist").write_text(json.dumps(network, indent=2) + "\n")

    def start(self, timeout: float = 60.0) -> float:
        """Start containerd and wait until it answers; the seconds taken."""
        began = time.monotonic()
        self.write_config()
        assert self.bin_dir is not None, "build() containerd first"
        argv = self.namespace.enter([str(self.bin_dir / "containerd"), "--config", str(self.config)])
        # The shim is found on containerd's PATH.
        env = {"PATH": f"{self.bin_dir}:{os.environ.get('PATH', '')}"}
        process = self.process = Process("containerd", argv, self.log, self.pid_dir, env).start()

        def answers() -> bool | None:
            process.check()
            if not self.socket.exists():
                return None
            return True if self.ctr("version", check=False).returncode == 0 else None

        wait_for("containerd to answer on its socket", answers, timeout)
        return time.monotonic() - began

    def ctr(
        self, *args: str, namespace: str = "k8s.io", check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ctr`` against this containerd."""
        assert self.bin_dir is not None
        argv = [str(self.bin_dir / "ctr"), "--address", str(self.socket), "--namespace", namespace, *args]
        done = subprocess.run(
            argv, capture_output=True, text=True, check=False, timeout=timeout, env=system_environment()
        )
        if check and done.returncode != 0:
            raise E2EError(
                f"{' '.join(argv)} failed with {done.returncode}:\n{done.stdout}{done.stderr}\n"
                f"containerd log tail:\n{tail(self.log)}"
            )
        return done

    def import_images(self) -> list[str]:
        """Build the busybox and pause images and import them for the kubelet (namespace k8s.io).

        busybox is also tagged :data:`images.BUSYBOX_AS_PULLED`, the name the kubelet
        looks up for the test deployment's ``busybox:1.37``: nothing can be pulled
        here, so the deployment finds the local image under the name it asks for.
        """
        archives = [images.busybox_archive(self.image_dir), images.pause_archive(self.image_dir)]
        for archive in archives:
            self.ctr("images", "import", str(archive))
        self.ctr("images", "tag", "--force", images.BUSYBOX, images.BUSYBOX_AS_PULLED)
        wanted = {images.BUSYBOX, images.BUSYBOX_AS_PULLED, images.PAUSE}
        listed = self.ctr("images", "list", "--quiet").stdout.split()
        missing = wanted - set(listed)
        if missing:
            raise E2EError(f"images {sorted(missing)} not listed after import: {listed}")
        return sorted(wanted)

    def import_archive(self, archive: Path, name: str) -> None:
        """Import an OCI archive (buildah's) and check that ``name`` is listed."""
        self.ctr("images", "import", str(archive), timeout=600)
        listed = self.ctr("images", "list", "--quiet").stdout.split()
        if name not in listed:
            raise E2EError(f"image {name} not listed after importing {archive}: {listed}")

    def run_by_hand(self) -> str:
        """``ctr run --rm`` a busybox container (no Kubernetes involved); its output."""
        name = f"spookd-e2e-smoke-{os.getpid()}-{time.monotonic_ns()}"
        script = "echo hello from runc; id -u; cat /proc/1/cgroup | grep -c ."
        done = self.ctr("run", "--rm", images.BUSYBOX, name, "sh", "-c", script, timeout=60)
        return done.stdout + (f"(stderr: {done.stderr})" if done.stderr else "")

    def remove_all_containers(self) -> list[str]:
        """Kill and delete every container in the kubelet's namespace (after a crash, or at the end)."""
        removed = []
        for line in self.ctr("tasks", "list", "--quiet", check=False).stdout.split():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", line, check=False)
        deadline = time.monotonic() + 20
        while (
            self.ctr("tasks", "list", "--quiet", check=False).stdout.split() and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        for container in self.ctr("containers", "list", "--quiet", check=False).stdout.split():
            self.ctr("tasks", "delete", "--force", container, check=False)
            self.ctr("containers", "delete", container, check=False)
            removed.append(container)
        return removed

    def running(self) -> bool:
        """Whether containerd was started and still runs."""
        return self.process is not None and self.process.running()

    def stop(self) -> None:
        """Stop containerd (its shims end with their containers)."""
        if self.process is not None:
            self.process.stop()
