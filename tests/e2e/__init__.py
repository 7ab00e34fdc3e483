"""The original's walkthrough on a real single-node cluster, on this machine.

A real kube-apiserver on etcd (tests/go/cmd/apiserver), kube-controller-manager,
kube-scheduler, kube-proxy and the kubelet (tests/go/cmd/e2enode, all built from the
k8s.io/kubernetes module), kubectl (tests/go/cmd/kubectl), containerd 2 built from
its Go module with Debian's runc, Spookd's image built from the Containerfile with
buildah on a Debian base made with mmdebstrap, a bridge CNI network, and Spookd as
the DaemonSet of deploy/spookd-device-plugin.yaml. The node has its own mount and
network namespaces.

``tests/test_e2e.py`` drives it (``SPOOKD_E2E=1 pytest tests/test_e2e.py``, as root);
``cd tests && python -m e2e`` brings it up by hand. See docs/e2e.md.
"""
