"""A single-node cluster on this machine, brought up in stages.

``Cluster.prepare()`` checks root, installs the Debian packages, ends what a crashed
earlier run left, makes the node's namespaces and builds the Go programs (the API
server, the node's components, kubectl, containerd 2); then each stage starts on
demand, so a test of an early stage does not depend on a later one:

1. ``start_runtime()``: containerd 2 + runc, the local images (Spookd's built from
   the Containerfile), ``ctr run`` by hand;
2. ``start_control_plane()``: kube-apiserver on etcd (tests/go/cmd/apiserver), on the
   machine's end of the node's link;
3. ``start_node()``: the kubelet registers Node ``minikube`` (the walkthrough's node
   name, so deploy/ applies unchanged) and it is Ready; kube-proxy serves the
   ``kubernetes`` Service;
4. ``start_controllers()``: kube-controller-manager and kube-scheduler;
5. ``start_spookd()``: ``kubectl apply -f deploy/spookd-device-plugin.yaml``, and the
   DaemonSet's pod registered with the kubelet.

``down()`` deletes the workloads (the kubelet tears their sandboxes down), stops every
process and undoes what the node changed on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from support import gobuild
from support.apiserver import ApiClient, ApiServer

from e2e import containerd, host, spookd_image
from e2e.containerd import BRIDGE, Containerd
from e2e.host import E2EError, Process, tail, wait_for

__all__ = [
    "HOST_IP",
    "LOGS",
    "NODE_IP",
    "NODE_NAME",
    "PLUGIN_DIR",
    "PLUGIN_MANIFEST",
    "POD_LOGS",
    "STATIC_PODS",
    "Cluster",
]

REPO = Path(__file__).resolve().parents[2]
PLUGIN_MANIFEST = REPO / "deploy" / "spookd-device-plugin.yaml"

#: The original walkthrough's node name: deploy/'s ConfigMap maps devices to it.
NODE_NAME = "minikube"
#: The machine's and the node's ends of the veth pair (a /30 of the node's own).
HOST_IP = "10.250.0.1"
NODE_IP = "10.250.0.2"
LINK = "spke2e-host"
KUBELET_PORT = 10250
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
    # CDI specs: containerd 2 reads them (a DRA plugin writes them) at the standard paths.
    NODE / "cdi-etc": Path("/etc/cdi"),
    NODE / "cdi-run": Path("/run/cdi"),
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
    "daemonset-controller",
    # Removes the node.kubernetes.io/not-ready taint the kubelet registers with.
    "node-lifecycle-controller",
    # DRA mode: makes the ResourceClaims of ResourceClaimTemplates and frees the
    # claims of pods that are gone (tests/test_e2e_dra.py).
    "resourceclaim-controller",
)


class Cluster:
    """The node and its control plane; see the module's docstring."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.notes: list[str] = []
        self.namespace = host.NodeNamespace(
            NODE_BINDS, LOGS / "node-namespace.log", PIDS, link=LINK, host_ip=HOST_IP, node_ip=NODE_IP
        )
        self.containerd = Containerd(ROOT / "containerd", STATE / "containerd", LOGS, PIDS, self.namespace)
        self.apiserver: ApiServer | None = None
        self.kubelet: Process | None = None
        self.controller_manager: Process | None = None
        self.scheduler: Process | None = None
        self.kube_proxy: Process | None = None
        self.e2enode: Path | None = None
        self.kubectl_binary: Path | None = None
        self.smoke_output = ""
        #: What ``kubectl apply -f deploy/spookd-device-plugin.yaml`` printed.
        self.spookd_apply_output = ""
        #: The image that was built and imported.
        self.image: spookd_image.Built | None = None
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
        # Before the leftovers: a crashed run's containers are removed through containerd.
        began = time.monotonic()
        self.containerd.bin_dir = containerd.build(LOGS / "containerd-build.log")
        self.timings[f"go install containerd {containerd.VERSION}"] = time.monotonic() - began
        self._clean_leftovers()
        # The values before any kubelet of ours ran (kept across a crashed run).
        if not KERNEL_SETTINGS.exists():
            KERNEL_SETTINGS.write_text(json.dumps(host.kernel_settings()))
        self._kernel = json.loads(KERNEL_SETTINGS.read_text())
        # podresources-list reads what the kubelet holds (its PodResources API).
        for program in ("apiserver", "e2enode", "kubectl", "podresources-list"):
            began = time.monotonic()
            binary = gobuild.build(program)
            self.timings[f"go build {program}"] = time.monotonic() - began
            if program == "e2enode":
                self.e2enode = binary
            elif program == "kubectl":
                self.kubectl_binary = binary

    def start_runtime(self) -> None:
        """containerd with the images; a busybox container run by hand with ``ctr run``."""
        if self.containerd.running():
            return
        began = time.monotonic()
        built = spookd_image.build(ROOT / "buildah", STATE / "buildah", LOGS / "image-build.log")
        self.timings.update(built.timings)
        self.timings["spookd image (all steps)"] = time.monotonic() - began
        self.image = built
        self.timings["containerd start"] = self.containerd.start()
        began = time.monotonic()
        self.containerd.import_images()
        self.timings["busybox/pause images build+import"] = time.monotonic() - began
        began = time.monotonic()
        self.containerd.import_archive(built.archive, spookd_image.IMAGE)
        self.timings["spookd image import"] = time.monotonic() - began
        began = time.monotonic()
        self.smoke_output = self.containerd.run_by_hand()
        self.timings["ctr run busybox"] = time.monotonic() - began

    def start_control_plane(self) -> ApiServer:
        """The API server on a fresh etcd."""
        if self.apiserver is None:
            began = time.monotonic()
            self.apiserver = ApiServer.start(ROOT / "apiserver", address=HOST_IP)
            self.timings["kube-apiserver start"] = time.monotonic() - began
        return self.apiserver

    def start_node(self) -> None:
        """The kubelet, until its Node is Ready; kube-proxy, until it serves the kubernetes Service."""
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
            f"--node-ip={NODE_IP}",
            f"--root-dir={KUBELET_ROOT}",
            "--v=2",
        ])  # fmt: skip
        self.kubelet = Process("kubelet", self._kubelet_argv, LOGS / "kubelet.log", PIDS, None).start()
        self.wait_node_ready(timeout=120)
        self.timings["kubelet start to Node Ready"] = time.monotonic() - began
        began = time.monotonic()
        self._start_kube_proxy()
        self.timings["kube-proxy start to Service rules"] = time.monotonic() - began

    def _start_kube_proxy(self) -> None:
        api = self.start_control_plane()
        assert self.e2enode is not None
        config = ROOT / "kube-proxy.yaml"
        config.write_text(json.dumps(self._kube_proxy_config(api.kubeconfig), indent=2) + "\n")
        argv = self.namespace.enter([str(self.e2enode), "kube-proxy", f"--config={config}", "--v=2"])
        self.kube_proxy = Process("kube-proxy", argv, LOGS / "kube-proxy.log", PIDS).start()

        def serves() -> bool | None:
            assert self.kube_proxy is not None
            self.kube_proxy.check()
            rules = self.node_command(["nft", "list", "table", "ip", "kube-proxy"], check=False)
            # The kubernetes Service's cluster IP, DNATed to the API server's address.
            ok = "10.0.0.1" in rules.stdout and f"dnat to {HOST_IP}:" in rules.stdout
            return True if ok else None

        try:
            wait_for("kube-proxy's rules for the kubernetes Service", serves, 60)
        except E2EError as error:
            raise E2EError(f"{error}\nkube-proxy log tail:\n{tail(LOGS / 'kube-proxy.log')}") from None

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
        """``kubectl apply -f deploy/spookd-device-plugin.yaml``; its pod Ready and registered."""
        self.start_controllers()
        if self.spookd_apply_output:
            return
        began = time.monotonic()
        self.spookd_apply_output = self.kubectl("apply", "-f", str(PLUGIN_MANIFEST)).stdout
        client = self.client()

        def advertised() -> bool | None:
            capacity = client.get("v1", "Node", NODE_NAME)["status"].get("capacity", {})
            return (
                True if "example.com/widget" in capacity and "example.com/thingamajig" in capacity else None
            )

        try:
            wait_for("the node's capacity to list Spookd's resources", advertised, 180)
        except E2EError as error:
            raise E2EError(f"{error}\n{self.logs()}") from None
        self.timings["kubectl apply to capacity on the Node"] = time.monotonic() - began

    def spookd_pod(self) -> dict[str, Any]:
        """The DaemonSet's one pod."""
        answer = self.client().request(
            "GET",
            "/api/v1/namespaces/kube-system/pods",
            query={"labelSelector": "app.kubernetes.io/name=spookd"},
        )
        items: list[dict[str, Any]] = answer.json.get("items", [])
        if len(items) != 1:
            raise E2EError(f"expected one Spookd pod, found {[i['metadata']['name'] for i in items]}")
        return items[0]

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

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the cluster's kubectl (v1.37.2) as the admin; E2EError on failure when ``check``."""
        return self.shell([self.kubectl_path(), *args], input=input, check=check, timeout=timeout)

    def kubectl_path(self) -> str:
        """The kubectl binary."""
        assert self.kubectl_binary is not None
        return str(self.kubectl_binary)

    def shell(
        self,
        argv: list[str] | str,
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """A command (or a shell line, for pipes) as a user types it: kubectl on PATH, KUBECONFIG set."""
        api = self.start_control_plane()
        env = host.system_environment({"KUBECONFIG": str(api.kubeconfig)})
        env["PATH"] = f"{Path(self.kubectl_path()).parent}{os.pathsep}{env['PATH']}"
        done = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            env=env,
            shell=isinstance(argv, str),
            cwd=REPO,
        )
        if check and done.returncode != 0:
            shown = argv if isinstance(argv, str) else " ".join(argv)
            raise E2EError(f"{shown} failed with {done.returncode}:\n{done.stdout}{done.stderr}")
        return done

    def node_command(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A command inside the node's namespaces (nft, ip, the kubelet's sockets)."""
        done = subprocess.run(
            self.namespace.enter(argv),
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            env=host.system_environment(),
        )
        if check and done.returncode != 0:
            raise E2EError(f"{' '.join(argv)} in the node failed with {done.returncode}: {done.stderr}")
        return done

    def restart_containerd(self) -> float:
        """Stop containerd (SIGTERM; the shims and containers live on) and start it again."""
        began = time.monotonic()
        self.containerd.stop()
        self.containerd.start()
        self.wait_node_ready(timeout=120)
        return time.monotonic() - began

    def restart_kubelet(self) -> float:
        """Stop the kubelet (SIGTERM) and start it again; seconds until its Node is Ready again."""
        assert self.kubelet is not None
        began = time.monotonic()
        self.kubelet.stop()
        self.kubelet = Process("kubelet", self._kubelet_argv, LOGS / "kubelet.log", PIDS, None).start()
        self.wait_node_ready(timeout=120)
        return time.monotonic() - began

    def spookd_records(self) -> list[dict[str, Any]]:
        """Spookd's JSON log lines, as ``kubectl logs`` shows them."""
        text = self.kubectl("-n", "kube-system", "logs", "daemonset/spookd").stdout
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def logs(self) -> str:
        """Tails of every component's log, for a failure message."""
        parts = []
        for name in ("kubelet", "containerd", "kube-proxy", "kube-scheduler", "kube-controller-manager"):
            parts.append(f"---- {name} ----\n{tail(LOGS / f'{name}.log', 2500)}")
        if self.kubectl_binary is not None and self.apiserver is not None:
            logs = self.kubectl("-n", "kube-system", "logs", "daemonset/spookd", "--tail=40", check=False)
            parts.append(f"---- spookd (kubectl logs) ----\n{logs.stdout[-2500:]}{logs.stderr[-500:]}")
        return "\n".join(parts)

    # -- tear-down ----------------------------------------------------------------

    def down(self) -> None:
        """Delete the pods, stop everything, undo the node's changes to the machine."""
        began = time.monotonic()
        if self.apiserver is not None and self.kubelet is not None and self.kubelet.running():
            self._delete_pods()
        for process in (self.kube_proxy, self.kubelet, self.scheduler, self.controller_manager):
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
        client.request("DELETE", "/apis/apps/v1/namespaces/kube-system/daemonsets/spookd")
        for namespace in ("default", "kube-system"):
            client.request(
                "DELETE", f"/api/v1/namespaces/{namespace}/pods", query={"gracePeriodSeconds": "1"}
            )

        def gone() -> bool | None:
            listing = client.request("GET", "/api/v1/pods")
            return True if listing.status == 200 and not listing.json.get("items") else None

        try:
            wait_for("every pod to be gone", gone, 60)
        except E2EError as error:
            self.notes.append(str(error))

    def _undo_host_changes(self) -> None:
        host.unmount_under(STATE, ROOT)
        host.remove_link(LINK)
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
        # An earlier walkthrough's bridge, made on the machine before the node had its own network.
        host.remove_link(BRIDGE)
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
            # The node's address: the API server dials it for exec and logs.
            "address": NODE_IP,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            # Only the API server's client certificate (from the test CA) gets in.
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.start_control_plane().ca_file)},
            },
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

    def _kube_proxy_config(self, kubeconfig: Path) -> dict[str, Any]:
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "nftables",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": NODE_NAME,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            "clusterCIDR": containerd.POD_SUBNET,
            # The API server's replies must come back through the node, which has the
            # only route to the pods: SNAT Service traffic to the node's address.
            "nftables": {"masqueradeAll": True},
            # No CAP_SYS_RESOURCE here (see containerd.py), and the conntrack
            # settings are the machine's: leave both as they are.
            "oomScoreAdj": 0,
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }


def _kubelet_running() -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and (argv[0].endswith(b"/kubelet") or argv[0] == b"kubelet" or argv[1:2] == [b"kubelet"]):
            return True
    return False
