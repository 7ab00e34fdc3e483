"""`nox -s demo`: Spookd serving the walkthrough example to the kubelet's real device manager.

No cluster is needed: the device manager (built from the kubelet's Go code) runs in a
private mount namespace over a temporary plugin directory, Spookd runs as a process
with the embedded walkthrough configuration for node `minikube`, and two pods that
each need one widget and one thingamajig are admitted: the first gets its devices
and environment, the second is refused, as in the original's README.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import walkthrough
from support.nodeharness import NodeHarness

WALKTHROUGH = walkthrough.CONFIG
POD = {"app": {"example.com/widget": 1, "example.com/thingamajig": 1}}


def main() -> int:
    """Run the walkthrough and print what a user would see."""
    workdir = Path(tempfile.mkdtemp(prefix="spookd-demo-"))
    plugin_dir = workdir / "plugins"
    plugin_dir.mkdir()
    config = workdir / "config.yaml"
    config.write_text(WALKTHROUGH)
    print(f"configuration ({config}):\n{WALKTHROUGH}")
    with NodeHarness() as kubelet:
        print("starting the kubelet's device manager (built from Go; the first build takes minutes)...")
        kubelet.start(plugin_dir)
        spookd = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "spookd",
                "run",
                "--config",
                str(config),
                "--node-name",
                "minikube",
                "--plugin-dir",
                str(plugin_dir),
                "--http-addr",
                "127.0.0.1:0",
                "--log-format",
                "text",
            ],
        )
        try:
            resources = kubelet.wait_for(
                lambda r: (
                    r.capacity("example.com/widget") == 1 and r.capacity("example.com/thingamajig") == 2
                ),
                timeout=30,
            )
            print("\nnode minikube, as the device manager sees it:")
            for name in sorted(resources.resources):
                state = resources[name]
                print(f"  {name}: capacity {state.capacity}, allocatable {state.allocatable}")
            first = kubelet.admit("pod-1", POD, name="spookd-test-1").raise_for_error()
            print("\npod spookd-test-1 admitted; its container gets:")
            for key, value in sorted(first.container("app").envs.items()):
                print(f"  {key}={value}")
            second = kubelet.admit("pod-2", POD, name="spookd-test-2")
            print(f"\npod spookd-test-2 refused: {second.error or second.message}")
        finally:
            spookd.send_signal(signal.SIGTERM)
            spookd.wait(timeout=10)
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nSpookd exited with {spookd.returncode}; sockets removed.")
    return 0 if spookd.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
