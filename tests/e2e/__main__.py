"""Bring the single-node cluster up by hand: ``cd tests && python -m e2e [--deploy]``.

Prints the admin kubeconfig's path and waits; Ctrl-C (or SIGTERM) tears it all down.
With ``--deploy`` it also applies deploy/spookd-test-deployment.yaml (its image
renamed to the local busybox image), as the walkthrough does.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

import yaml

from e2e import images
from e2e.cluster import LOGS, NODE_NAME, POD_LOGS, Cluster

TEST_DEPLOYMENT = Path(__file__).resolve().parents[2] / "deploy" / "spookd-test-deployment.yaml"


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
            deployment = yaml.safe_load(TEST_DEPLOYMENT.read_text())
            deployment["spec"]["template"]["spec"]["containers"][0]["image"] = images.BUSYBOX
            answer = cluster.client().create(deployment)
            print(f"test deployment: HTTP {answer.status}")
        api = cluster.start_control_plane()
        print(f"node {NODE_NAME} is Ready; Spookd serves it.")
        print(f"  export KUBECONFIG={api.kubeconfig}")
        print(f"  logs: {LOGS}; container logs: {POD_LOGS}")
        print("Ctrl-C to tear down.")
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.down()
        for name, seconds in cluster.timings.items():
            print(f"{name:>32}: {seconds:7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
