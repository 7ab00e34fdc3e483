"""containerd and runc from Debian's packages, as the node's container runtime.

Its own root (``/var/lib/spookd-e2e/containerd``), state and socket
(``/run/spookd-e2e/containerd/containerd.sock``), so it never meets a containerd the
machine may run already. Configuration, each line for a reason:

- ``sandbox_image``: the locally built pause image (nothing can be pulled);
- ``restrict_oom_score_adj = true``: this sandbox has no CAP_SYS_RESOURCE, so runc
  cannot lower a container's oom_score_adj (the kubelet asks -998 for sandboxes,
  -997 for Guaranteed pods); containerd then clamps the value to its own (0), as for
  rootless containerd. Without it every pod fails with runc's
  ``nsexec: failed to update /proc/self/oom_score_adj: Permission denied``;
- ``netns_mounts_under_state_dir``: pod network namespaces live under its own state
  directory, so that a crashed run's can be found and unmounted;
- cgroupfs (not systemd) cgroups: there is no systemd here;
- CNI: a ``bridge`` network with ``host-local`` addresses, no gateway, no masquerade,
  no routes: pods get an address on a bridge that leads nowhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from e2e import images
from e2e.host import E2EError, MountNamespace, Process, system_environment, tail, wait_for

__all__ = ["BRIDGE", "POD_SUBNET", "Containerd"]

BRIDGE = "spke2e0"
POD_SUBNET = "10.244.0.0/24"
CNI_BIN = Path("/usr/lib/cni")

_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
"""


class Containerd:
    """A containerd process with the walkthrough's images imported."""

    def __init__(self, root: Path, state: Path, logs: Path, pid_dir: Path, namespace: MountNamespace) -> None:
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
                    "isGateway": False,
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
        argv = self.namespace.enter(["containerd", "--config", str(self.config)])
        process = self.process = Process("containerd", argv, self.log, self.pid_dir).start()

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
        argv = ["ctr", "--address", str(self.socket), "--namespace", namespace, *args]
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
        """Build the busybox and pause images and import them for the kubelet (namespace k8s.io)."""
        archives = [images.busybox_archive(self.image_dir), images.pause_archive(self.image_dir)]
        for archive in archives:
            self.ctr("images", "import", str(archive))
        listed = self.ctr("images", "list", "--quiet").stdout.split()
        missing = {images.BUSYBOX, images.PAUSE} - set(listed)
        if missing:
            raise E2EError(f"images {sorted(missing)} not listed after import: {listed}")
        return [images.BUSYBOX, images.PAUSE]

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
