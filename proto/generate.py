"""Generate spookd/_proto from proto/ with betterproto2 (async grpclib client and server).

Usage: python proto/generate.py [OUTPUT_DIR]   (default: spookd/_proto)
`nox -s proto` runs this; tests/test_proto.py checks the committed code is fresh.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
OPTIONS = "client_generation=async,server_generation=async"
#: The Device Plugin API also as protobuf's own (upb) classes: Allocate's hot path.
UPB_PROTOS = ["v1beta1/api.proto"]


def generate(out: Path) -> None:
    """Write the generated package into ``out`` (replacing it)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    scripts = sysconfig.get_path("scripts")
    env = {**os.environ, "PATH": scripts + os.pathsep + os.environ.get("PATH", "")}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"--plugin=protoc-gen-python_betterproto2={Path(scripts) / 'protoc-gen-python_betterproto2'}",
            f"--python_betterproto2_out={out}",
            f"--python_betterproto2_opt={OPTIONS}",
            *PROTOS,
        ],
        check=True,
        cwd=ROOT / "proto",
        env=env,
        stdout=subprocess.DEVNULL,
    )
    upb = out / "upb"
    upb.mkdir()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"--python_out={upb}",
            f"--pyi_out={upb}",
            *UPB_PROTOS,
        ],
        check=True,
        cwd=ROOT / "proto",
    )
    for package in {upb, *((upb / p).parent for p in UPB_PROTOS)}:
        (package / "__init__.py").write_text("")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "spookd" / "_proto")
