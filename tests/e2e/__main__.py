"""Bring the single-node cluster up by hand: ``cd tests && python -m e2e [--deploy]``.

Applies deploy/spookd-device-plugin.yaml with kubectl, prints the admin kubeconfig's
path and waits; Ctrl-C (or SIGTERM) tears it all down. With ``--deploy`` it also
applies deploy/spookd-test-deployment.yaml, as the walkthrough does.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from e2e.cluster import LOGS, NODE_NAME, Cluster


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--deploy", action="store_true", help="apply the test deployment too")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    cluster = Cluster()
    try:
        cluster.prepare()
        cluster.start_spookd()
        if args.deploy:
            print(cluster.kubectl("apply", "-f", "deploy/spookd-test-deployment.yaml").stdout, end="")
        api = cluster.start_control_plane()
        print(f"node {NODE_NAME} is Ready; Spookd's DaemonSet serves it.")
        print(f"  export KUBECONFIG={api.kubeconfig} PATH={cluster.kubectl_path().rsplit('/', 1)[0]}:$PATH")
        print(f"  logs: {LOGS}")
        print("Ctrl-C to tear down.")
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.down()
        for name, seconds in cluster.timings.items():
            print(f"{name:>40}: {seconds:7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
