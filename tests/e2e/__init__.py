"""The original's walkthrough on a real single-node cluster, on this machine.

A real kube-apiserver on etcd (tests/go/cmd/apiserver), kube-controller-manager,
kube-scheduler and the kubelet (tests/go/cmd/e2enode, all built from the
k8s.io/kubernetes module), containerd and runc from Debian's packages, images made
locally from Debian's busybox-static, a bridge CNI network, and Spookd as a process
on the node reading the ConfigMap of deploy/spookd-device-plugin.yaml.

``tests/test_e2e.py`` drives it (``SPOOKD_E2E=1 pytest tests/test_e2e.py``, as root);
``cd tests && python -m e2e`` brings it up by hand. See docs/e2e.md.
"""
