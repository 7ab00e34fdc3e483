"""A single-node cluster on this machine, brought up in stages.

``Cluster.prepare()`` checks root, installs the Debian packages, ends what a crashed
earlier run left and builds the Go programs; then each stage starts on demand, so a
test of an early stage does not depend on a later one:

1. ``start_runtime()``: containerd + runc, the local images, ``ctr run`` by hand;
2. ``start_control_plane()``: kube-apiserver on etcd (tests/go/cmd/apiserver);
3. ``start_node()``: the kubelet registers Node ``spookd-e2e`` and it is Ready;
4. ``start_controllers()``: kube-controller-manager and kube-scheduler;
5. ``start_spookd()``: deploy/spookd-device-plugin.yaml without its DaemonSet (the
   ConfigMap's ``hosts`` set to the node's name), and ``python -m spookd run`` on the
   node with the ``spookd`` ServiceAccount's token (so its RBAC is the real one).

``down()`` deletes the pods (the kubelet tears their sandboxes down), stops every
process and undoes what the node changed on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from support import gobuild
from support.apiserver import ApiClient, ApiServer

from e2e import host
from e2e.containerd import BRIDGE, Containerd
from e2e.host import E2EError, Process, tail, wait_for

__all__ = ["LOGS", "NODE_NAME", "PLUGIN_DIR", "POD_LOGS", "STATIC_PODS", "Cluster", "plugin_objects"]

REPO = Path(__file__).resolve().parents[2]
PLUGIN_MANIFEST = REPO / "deploy" / "spookd-device-plugin.yaml"

NODE_NAME = "spookd-e2e"
#: Everything of the walkthrough's own: containerd's root, CNI data, logs, etcd.
ROOT = Path("/var/lib/spookd-e2e")
#: containerd's state and socket, pod network namespaces.
STATE = Path("/run/spookd-e2e")
KUBELET_ROOT = Path("/var/lib/kubelet")
PLUGIN_DIR = KUBELET_ROOT / "device-plugins"
#: The node's own directories, bind-mounted over the standard paths in its mount namespace.
NODE = ROOT / "node"
POD_LOGS = NODE / "pod-logs"
NODE_BINDS = {
    NODE / "kubelet": KUBELET_ROOT,
    POD_LOGS: Path("/var/log/pods"),
    NODE / "container-logs": Path("/var/log/containers"),
}
STATIC_PODS = ROOT / "manifests"
LOGS = ROOT / "logs"
PIDS = ROOT / "pids"
KERNEL_SETTINGS = ROOT / "kernel-settings.json"

CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "serviceaccount-controller",
    "root-ca-certificate-publisher-controller",
    "garbage-collector-controller",
    # Removes the node.kubernetes.io/not-ready taint the kubelet registers with.
    "node-lifecycle-controller",
)


class Cluster:
    """The node and its control plane; see the module's docstring."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.notes: list[str] = []
        self.namespace = host.MountNamespace(NODE_BINDS, LOGS / "mount-namespace.log", PIDS)
        self.containerd = Containerd(ROOT / "containerd", STATE / "containerd", LOGS, PIDS, self.namespace)
        self.apiserver: ApiServer | None = None
        self.kubelet: Process | None = None
        self.controller_manager: Process | None = None
        self.scheduler: Process | None = None
        self.spookd: Process | None = None
        self.e2enode: Path | None = None
        self.smoke_output = ""
        self.spookd_kubeconfig: Path | None = None
        self._kernel: dict[str, str] = {}
        self._kubelet_argv: list[str] = []

    # -- stages -----------------------------------------------------------------

    def prepare(self) -> None:
        """Root, packages, leftovers of an earlier run, the Go builds."""
        host.require_root()
        LOGS.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        installed = host.ensure_packages(LOGS / "apt.log")
        self.timings["apt-get install"] = time.monotonic() - began
        if installed:
            self.notes.append(f"installed Debian packages: {', '.join(installed)}")
        self._clean_leftovers()
        # The values before any kubelet of ours ran (kept across a crashed run).
        if not KERNEL_SETTINGS.exists():
            KERNEL_SETTINGS.write_text(json.dumps(host.kernel_settings()))
        self._kernel = json.loads(KERNEL_SETTINGS.read_text())
        for program in ("apiserver", "e2enode"):
            began = time.monotonic()
            binary = gobuild.build(program)
            self.timings[f"go build {program}"] = time.monotonic() - began
            if program == "e2enode":
                self.e2enode = binary

    def start_runtime(self) -> None:
        """containerd with the images; a busybox container run by hand with ``ctr run``."""
        if self.containerd.running():
            return
        self.timings["containerd start"] = self.containerd.start()
        began = time.monotonic()
        self.containerd.import_images()
        self.timings["images build+import"] = time.monotonic() - began
        began = time.monotonic()
        self.smoke_output = self.containerd.run_by_hand()
        self.timings["ctr run busybox"] = time.monotonic() - began

    def start_control_plane(self) -> ApiServer:
        """The API server on a fresh etcd."""
        if self.apiserver is None:
            began = time.monotonic()
            self.apiserver = ApiServer.start(ROOT / "apiserver")
            self.timings["kube-apiserver start"] = time.monotonic() - began
        return self.apiserver

    def start_node(self) -> None:
        """The kubelet, until its Node is Ready."""
        self.start_runtime()
        api = self.start_control_plane()
        if self.kubelet is not None:
            return
        began = time.monotonic()
        STATIC_PODS.mkdir(parents=True, exist_ok=True)
        config = ROOT / "kubelet.yaml"
        config.write_text(json.dumps(self._kubelet_config(), indent=2) + "\n")
        assert self.e2enode is not None
        self._kubelet_argv = self.namespace.enter([
            str(self.e2enode), "kubelet",
            f"--config={config}",
            f"--kubeconfig={api.kubeconfig}",
            f"--hostname-override={NODE_NAME}",
            f"--root-dir={KUBELET_ROOT}",
            "--v=2",
        ])  # fmt: skip
        self.kubelet = Process("kubelet", self._kubelet_argv, LOGS / "kubelet.log", PIDS, None).start()
        self.wait_node_ready(timeout=120)
        self.timings["kubelet start to Node Ready"] = time.monotonic() - began

    def start_controllers(self) -> None:
        """kube-controller-manager and kube-scheduler; the default ServiceAccount exists."""
        self.start_node()
        if self.scheduler is not None:
            return
        api = self.start_control_plane()
        assert self.e2enode is not None
        began = time.monotonic()
        common = [f"--kubeconfig={api.kubeconfig}", "--leader-elect=false", "--secure-port=0", "--v=2"]
        self.controller_manager = Process(
            "kube-controller-manager",
            [
                str(self.e2enode),
                "kube-controller-manager",
                *common,
                f"--controllers={','.join(CONTROLLERS)}",
                f"--root-ca-file={api.ca_file}",
            ],
            LOGS / "kube-controller-manager.log",
            PIDS,
        ).start()
        self.scheduler = Process(
            "kube-scheduler",
            [str(self.e2enode), "kube-scheduler", *common],
            LOGS / "kube-scheduler.log",
            PIDS,
        ).start()
        client = api.client()

        def ready() -> bool | None:
            assert self.controller_manager is not None
            assert self.scheduler is not None
            self.controller_manager.check()
            self.scheduler.check()
            account = client.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
            node = client.get("v1", "Node", NODE_NAME)
            tainted = any(
                t.get("key") == "node.kubernetes.io/not-ready" for t in node["spec"].get("taints", [])
            )
            return True if account.status == 200 and not tainted else None

        wait_for("the default ServiceAccount and an untainted Ready node", ready, 120)
        self.timings["controllers ready"] = time.monotonic() - began

    def start_spookd(self) -> None:
        """The plugin's manifest (no DaemonSet) and Spookd as a process on the node."""
        self.start_controllers()
        if self.spookd is not None:
            return
        api = self.start_control_plane()
        began = time.monotonic()
        client = api.client()
        for obj in plugin_objects(NODE_NAME):
            created = client.create(obj)
            if created.status != 201:
                raise E2EError(
                    f"creating {obj['kind']} {obj['metadata']['name']}: {created.status} {created.text}"
                )
        token = api.service_account_token("kube-system", "spookd")
        self.spookd_kubeconfig = api.write_kubeconfig(
            ROOT / "spookd.kubeconfig", token, namespace="kube-system"
        )
        argv = [
            sys.executable, "-m", "spookd", "run",
            "--configmap", "kube-system/spookd-config",
            "--node-name", NODE_NAME,
            "--plugin-dir", str(PLUGIN_DIR),
            "--http-addr", "", "--log-format", "json", "--log-level", "debug",
        ]  # fmt: skip
        env = {"KUBECONFIG": str(self.spookd_kubeconfig)}
        self.spookd = Process("spookd", self.namespace.enter(argv), LOGS / "spookd.log", PIDS, env).start()

        def advertised() -> bool | None:
            assert self.spookd is not None
            self.spookd.check()
            capacity = client.get("v1", "Node", NODE_NAME)["status"].get("capacity", {})
            return (
                True if "example.com/widget" in capacity and "example.com/thingamajig" in capacity else None
            )

        wait_for("the node's capacity to list Spookd's resources", advertised, 60)
        self.timings["spookd start to capacity"] = time.monotonic() - began

    # -- operations ---------------------------------------------------------------

    def client(self) -> ApiClient:
        """An admin REST client."""
        return self.start_control_plane().client()

    def node(self) -> dict[str, Any]:
        """The Node object."""
        return self.client().get("v1", "Node", NODE_NAME)

    def wait_node_ready(self, timeout: float) -> dict[str, Any]:
        """Wait until the Node exists and its Ready condition is True."""
        client = self.client()

        def ready() -> dict[str, Any] | None:
            assert self.kubelet is not None
            self.kubelet.check()
            answer = client.request("GET", f"/api/v1/nodes/{NODE_NAME}")
            if answer.status != 200:
                return None
            conditions = {c["type"]: c["status"] for c in answer.json["status"].get("conditions", [])}
            return answer.json if conditions.get("Ready") == "True" else None

        try:
            return wait_for(f"Node {NODE_NAME} to be Ready", ready, timeout)
        except E2EError as error:
            raise E2EError(f"{error}\nkubelet log tail:\n{tail(LOGS / 'kubelet.log')}") from None

    def restart_kubelet(self) -> float:
        """Stop the kubelet (SIGTERM) and start it again; seconds until its Node is Ready again."""
        assert self.kubelet is not None
        began = time.monotonic()
        self.kubelet.stop()
        self.kubelet = Process("kubelet", self._kubelet_argv, LOGS / "kubelet.log", PIDS, None).start()
        self.wait_node_ready(timeout=120)
        return time.monotonic() - began

    def container_log(self, pod: Mapping[str, Any], container: str) -> str:
        """A container's output from the kubelet's log file (what ``kubectl logs`` reads).

        The API server's pods/log would dial the kubelet at the Node's InternalIP
        (this machine's eth0 address); the walkthrough keeps all traffic on loopback.
        """
        meta = pod["metadata"]
        # A static pod's files are named after its own UID, not its mirror pod's.
        uid = meta.get("annotations", {}).get("kubernetes.io/config.mirror", meta["uid"])
        statuses = {s["name"]: s for s in pod["status"].get("containerStatuses", [])}
        restarts = statuses[container]["restartCount"]
        path = POD_LOGS / f"{meta['namespace']}_{meta['name']}_{uid}" / container / f"{restarts}.log"
        lines = []
        for line in path.read_text().splitlines():
            # CRI log format: <time> <stream> <P|F> <text>
            parts = line.split(" ", 3)
            lines.append(parts[3] if len(parts) == 4 else "")
        return "\n".join(lines)

    def spookd_records(self) -> list[dict[str, Any]]:
        """Spookd's JSON log lines."""
        records = []
        for line in (LOGS / "spookd.log").read_text().splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        return records

    def logs(self) -> str:
        """Tails of every component's log, for a failure message."""
        parts = []
        for name in ("kubelet", "containerd", "spookd", "kube-scheduler", "kube-controller-manager"):
            parts.append(f"---- {name} ----\n{tail(LOGS / f'{name}.log', 2500)}")
        return "\n".join(parts)

    # -- tear-down ----------------------------------------------------------------

    def down(self) -> None:
        """Delete the pods, stop everything, undo the node's changes to the machine."""
        began = time.monotonic()
        if self.apiserver is not None and self.kubelet is not None and self.kubelet.running():
            self._delete_pods()
        for process in (self.spookd, self.kubelet, self.scheduler, self.controller_manager):
            if process is not None:
                process.stop()
        if self.containerd.running():
            self.containerd.remove_all_containers()
            self.containerd.stop()
        self.namespace.stop()
        if self.apiserver is not None:
            self.apiserver.close()
        self._undo_host_changes()
        self.timings["tear-down"] = time.monotonic() - began

    def _delete_pods(self) -> None:
        client = self.client()
        (STATIC_PODS).mkdir(parents=True, exist_ok=True)
        for manifest in STATIC_PODS.glob("*.yaml"):
            manifest.unlink()
        client.request("DELETE", "/apis/apps/v1/namespaces/default/deployments/spookd-test")
        client.request("DELETE", "/api/v1/namespaces/default/pods", query={"gracePeriodSeconds": "1"})

        def gone() -> bool | None:
            listing = client.request("GET", "/api/v1/pods")
            return True if listing.status == 200 and not listing.json.get("items") else None

        try:
            wait_for("every pod to be gone", gone, 60)
        except E2EError as error:
            self.notes.append(str(error))

    def _undo_host_changes(self) -> None:
        host.unmount_under(STATE, ROOT)
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
        host.remove_cgroups("kubepods")
        if self._kernel:
            host.restore_kernel_settings(self._kernel)
            KERNEL_SETTINGS.unlink(missing_ok=True)

    def _clean_leftovers(self) -> None:
        """What a crashed earlier run left: processes, containers, state; then a new namespace."""
        ended = host.end_stale_processes(PIDS)
        if ended:
            self.notes.append(f"ended leftovers of an earlier run: {', '.join(ended)}")
        if _kubelet_running():
            raise E2EError("a kubelet not started by this walkthrough is running on this machine")
        if (ROOT / "containerd").is_dir() and (STATE / "containerd").is_dir():
            # Containers outlive containerd: start it once more to remove them.
            self.namespace.start()
            try:
                self.containerd.start()
                removed = self.containerd.remove_all_containers()
                self.containerd.stop()
            finally:
                self.namespace.stop()
            if removed:
                self.notes.append(f"removed {len(removed)} leftover containers")
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
        for path in (NODE, STATE, ROOT / "apiserver", ROOT / "cni", STATIC_PODS):
            host.remove_tree(path)
        host.remove_cgroups("kubepods")
        self.namespace.start()

    def _kubelet_config(self) -> dict[str, Any]:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # This machine has cgroup v1 only (no controller is on the v2 hierarchy).
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": self.containerd.endpoint,
            # Loopback only; the API server never needs to reach the kubelet here.
            "address": "127.0.0.1",
            "port": host.free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": host.free_port(),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "staticPodPath": str(STATIC_PODS),
            "failSwapOn": False,
            # A shared machine's disk may be nearly full: never evict or collect images for it.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "featureGates": {"ResourceHealthStatus": True},
        }


def plugin_objects(node_name: str) -> list[dict[str, Any]]:
    """deploy/spookd-device-plugin.yaml without the DaemonSet; the mapping's hosts set to ``node_name``."""
    objects = []
    for obj in yaml.safe_load_all(PLUGIN_MANIFEST.read_text()):
        if not obj or obj["kind"] == "DaemonSet":
            continue
        if obj["kind"] == "ConfigMap":
            config = yaml.safe_load(obj["data"]["config.yaml"])
            for mapping in config["deviceMapping"]:
                mapping["hosts"] = [node_name]
            obj["data"]["config.yaml"] = yaml.safe_dump(config, sort_keys=False)
        objects.append(obj)
    return objects


def _kubelet_running() -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and (argv[0].endswith(b"/kubelet") or argv[0] == b"kubelet" or argv[1:2] == [b"kubelet"]):
            return True
    return False
