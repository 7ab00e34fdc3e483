"""The node's host: packages, processes, namespaces, kernel settings and cgroups.

Everything the walkthrough changes on the machine is undone at the end: the node runs
in its own mount and network namespaces (its network: a veth pair to the machine, the
pod bridge and kube-proxy's nftables rules live and die with the namespace), its own
containerd (own root, state and socket); every process it started is stopped, what
the kubelet and containerd left mounted under their directories is unmounted, the
kubelet's cgroups are removed and the kernel settings the kubelet changes
(vm.overcommit_memory, kernel.panic, kernel.panic_on_oops, ...) are restored.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

__all__ = [
    "PACKAGES",
    "E2EError",
    "NodeNamespace",
    "Process",
    "end_stale_processes",
    "ensure_packages",
    "free_port",
    "kernel_settings",
    "remove_cgroups",
    "remove_link",
    "run_logged",
    "remove_tree",
    "require_root",
    "system_environment",
    "restore_kernel_settings",
    "tail",
    "unmount_under",
    "wait_for",
]

#: Debian packages the node needs, each with a file that tells whether it is installed:
#: runc under containerd 2 (built from Go), busybox for the test images, the CNI
#: plugins, nft for kube-proxy's nftables mode, buildah and mmdebstrap for Spookd's image.
PACKAGES: Mapping[str, str] = {
    "runc": "/usr/sbin/runc",
    "busybox-static": "/bin/busybox",
    "containernetworking-plugins": "/usr/lib/cni/bridge",
    "nftables": "/usr/sbin/nft",
    "buildah": "/usr/bin/buildah",
    "mmdebstrap": "/usr/bin/mmdebstrap",
}

#: Kernel settings the kubelet's container manager sets (pkg/kubelet/cm setupKernelTunables).
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)

_LOG_TAIL = 4000

T = TypeVar("T")


class E2EError(RuntimeError):
    """A step of the walkthrough failed; the message carries the evidence."""


def require_root() -> None:
    """The kubelet, containerd and runc need root."""
    if os.geteuid() != 0:
        raise E2EError("the end-to-end walkthrough needs root (kubelet, containerd, runc)")


def ensure_packages(log: Path) -> list[str]:
    """Install the missing Debian packages with apt-get; return the ones installed."""
    missing = [name for name, path in PACKAGES.items() if not Path(path).exists()]
    if not missing:
        return []
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with log.open("ab") as out:
        for argv in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        ):
            done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
            if done.returncode != 0:
                raise E2EError(f"{' '.join(argv)} failed with {done.returncode}:\n{tail(log)}")
    still = [name for name in missing if not Path(PACKAGES[name]).exists()]
    if still:
        raise E2EError(f"apt-get installed {missing} but {still} are still missing")
    return missing


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def tail(path: Path, size: int = _LOG_TAIL) -> str:
    """The end of a log file."""
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - size))
            return log.read().decode("utf-8", "replace")
    except OSError as error:
        return f"(no log {path}: {error})"


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """Call ``probe`` until it returns something other than None; E2EError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = probe()
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            value, last_error = None, error
        if value is not None:
            return value
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise E2EError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


def system_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment, with the system directories on PATH (runc, mount, ip)."""
    env = {**os.environ, **(extra or {})}
    system = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    path = env.get("PATH", "").split(os.pathsep)
    env["PATH"] = os.pathsep.join([p for p in path if p] + [d for d in system if d not in path])
    return env


class Process:
    """A component started by the walkthrough: its own session, its log, a pid file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        pid_dir: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.pid_file = pid_dir / f"{name}.pid"
        self.env = system_environment(env)
        # Not the repository: ``python -m spookd`` must import the installed package.
        self.cwd = log.parent
        self.popen: subprocess.Popen[bytes] | None = None
        #: The program that ends up running (``/proc/<pid>/cmdline``), if not argv[0].
        self.program: str | None = None
        #: time.monotonic() at start.
        self.started = 0.0

    def start(self) -> Process:
        """Start it, appending to its log; a pid file lets a later run end it after a crash."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        with self.log.open("ab") as out:
            out.write(f"\n==== {time.strftime('%H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
            out.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        # What /proc/<pid>/cmdline starts with once nsenter has exec'd the program.
        program = self.argv[self.argv.index("--") + 1] if self.argv[0] == "nsenter" else self.argv[0]
        self.pid_file.write_text(f"{self.popen.pid}\n{self.program or program}\n")
        return self

    def running(self) -> bool:
        """Whether it was started and has not exited."""
        return self.popen is not None and self.popen.poll() is None

    def check(self) -> None:
        """E2EError with the log's tail if it has exited."""
        if self.popen is not None and self.popen.poll() is not None:
            raise E2EError(f"{self.name} exited with {self.popen.returncode}; log tail:\n{tail(self.log)}")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit status."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.pid_file.unlink(missing_ok=True)
        return self.popen.returncode


class NodeNamespace:
    """Private mount and network namespaces for the node, held open by a sleeping process.

    Mounts: the node's directories are bind-mounted over the standard paths inside it
    (``/var/lib/kubelet``, ``/var/log/pods``, ...), so that containerd, the kubelet
    and Spookd see the paths a real node has, while the machine's own directories
    stay untouched: another program's ``/var/lib/kubelet/device-plugins`` (the node
    harness bind-mounts over it in its own namespace) is never removed or shared, and
    every mount the node makes (overlays, pod volumes, network namespaces) lives and
    dies with this namespace.

    Network: a veth pair joins the node (``node_ip`` on its ``eth0``) to the machine
    (``host_ip``, where the API server listens), like a node's link to its control
    plane; the kubelet serves on ``node_ip``, the API server dials it there. The
    pod bridge, routes and kube-proxy's nftables rules are the namespace's own, so
    nothing of the node's network touches the machine's.
    """

    def __init__(
        self,
        binds: Mapping[Path, Path],
        log: Path,
        pid_dir: Path,
        *,
        link: str,
        host_ip: str,
        node_ip: str,
    ) -> None:
        self.binds = dict(binds)
        self.link, self.host_ip, self.node_ip = link, host_ip, node_ip
        self.log = log
        script = (
            'while [ $# -gt 1 ]; do mkdir -p "$1" "$2" && mount --bind "$1" "$2" || exit 1; shift 2; done; '
        )
        script += "exec sleep 2147483647"
        pairs = [str(p) for source, target in self.binds.items() for p in (source, target)]
        argv = ["unshare", "--mount", "--net", "--propagation", "private", "--", "sh", "-c", script, "sh"]
        self.holder = Process("node-namespace", [*argv, *pairs], log, pid_dir)
        self.holder.program = "sleep"

    @property
    def pid(self) -> int:
        """The holder's process id."""
        assert self.holder.popen is not None
        return self.holder.popen.pid

    def start(self, timeout: float = 10.0) -> None:
        """Create the namespaces, wait for every bind mount, connect the node's network."""
        remove_link(self.link)
        self.holder.start()
        pid = self.pid
        targets = {str(target) for target in self.binds.values()}

        def mounted() -> bool | None:
            self.holder.check()
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] != b"sleep":
                return None
            info = Path(f"/proc/{pid}/mountinfo").read_text()
            points = {line.split()[4] for line in info.splitlines()}
            return True if targets <= points else None

        wait_for("the node's mount namespace", mounted, timeout, interval=0.05)
        inside = ["nsenter", f"--net=/proc/{pid}/ns/net", "--"]
        for argv in (
            ["ip", "link", "add", self.link, "type", "veth", "peer", "name", "eth0", "netns", str(pid)],
            ["ip", "address", "add", f"{self.host_ip}/30", "dev", self.link],
            ["ip", "link", "set", self.link, "up"],
            [*inside, "ip", "link", "set", "lo", "up"],
            [*inside, "ip", "address", "add", f"{self.node_ip}/30", "dev", "eth0"],
            [*inside, "ip", "link", "set", "eth0", "up"],
            # Pods reach the API server through the node (kube-proxy's DNAT, then out eth0).
            [*inside, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
        ):
            run_logged(argv, self.log)

    def enter(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespaces."""
        pid = self.pid
        return ["nsenter", f"--mount=/proc/{pid}/ns/mnt", f"--net=/proc/{pid}/ns/net", "--", *argv]

    def stop(self) -> None:
        """End the holder; the namespaces (and the veth pair) go when their last process does."""
        self.holder.stop(timeout=5)
        remove_link(self.link)


def run_logged(argv: Sequence[str], log: Path, timeout: float = 60.0) -> str:
    """Run a set-up command, its output appended to ``log``; E2EError when it fails."""
    done = subprocess.run(
        list(argv), capture_output=True, text=True, check=False, timeout=timeout, env=system_environment()
    )
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}")
    if done.returncode != 0:
        raise E2EError(f"{' '.join(argv)} failed with {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout


def remove_link(name: str) -> None:
    """Delete a network link of the machine's if it exists (a crashed run's veth end)."""
    subprocess.run(["ip", "link", "delete", name], capture_output=True, check=False)


def end_stale_processes(pid_dir: Path) -> list[str]:
    """End components a crashed earlier run left behind (from their pid files)."""
    ended: list[str] = []
    if not pid_dir.is_dir():
        return ended
    for pid_file in sorted(pid_dir.glob("*.pid")):
        lines = pid_file.read_text().split("\n")
        pid_file.unlink()
        try:
            pid, program = int(lines[0]), lines[1]
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except (ValueError, IndexError, OSError):
            continue
        if cmdline != program:
            continue  # the pid was reused by something else
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            ended.append(f"{pid_file.stem} ({pid})")
    return ended


def _mounts() -> Iterator[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        for line in info:
            # Field 5 is the mount point, with spaces and the like octal-escaped.
            yield line.split()[4].encode().decode("unicode_escape")


def unmount_under(*roots: Path) -> list[str]:
    """Unmount (lazily) every mount point at or below ``roots``, deepest first."""
    prefixes = [str(root) for root in roots]
    targets = sorted(
        {m for m in _mounts() if any(m == p or m.startswith(p + "/") for p in prefixes)},
        key=lambda m: m.count("/"),
        reverse=True,
    )
    for target in targets:
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)
    return targets


def kernel_settings() -> dict[str, str]:
    """The current values of the kernel settings the kubelet changes."""
    values = {}
    for key in KUBELET_SYSCTLS:
        path = Path("/proc/sys") / key
        with contextlib.suppress(OSError):
            values[key] = path.read_text().strip()
    return values


def restore_kernel_settings(saved: Mapping[str, str]) -> None:
    """Write back what :func:`kernel_settings` read."""
    for key, value in saved.items():
        with contextlib.suppress(OSError):
            (Path("/proc/sys") / key).write_text(value + "\n")


def remove_cgroups(name: str = "kubepods") -> None:
    """Remove the kubelet's (now empty) cgroup trees ``<hierarchy>/<name>`` , deepest first."""
    base = Path("/sys/fs/cgroup")
    tops = [base / name] + [h / name for h in base.iterdir() if h.is_dir() and not h.is_symlink()]
    for top in tops:
        if not top.is_dir():
            continue
        directories = sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        )
        for directory in [*directories, top]:
            with contextlib.suppress(OSError):
                directory.rmdir()


def remove_tree(path: Path) -> None:
    """rm -rf, after unmounting whatever is mounted below it."""
    unmount_under(path)
    shutil.rmtree(path, ignore_errors=True)
