"""The committed generated code is exactly what `nox -s proto` produces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tree(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): p.read_text()
        for p in sorted(path.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_matches_the_proto_files(tmp_path: Path) -> None:
    out = tmp_path / "_proto"
    subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), str(out)], check=True)
    committed = _tree(ROOT / "spookd" / "_proto")
    fresh = _tree(out)
    assert sorted(committed) == sorted(fresh)
    for name, text in fresh.items():
        assert committed[name] == text, f"spookd/_proto/{name} is stale: run `nox -s proto`"


def test_wire_names_match_the_kubelet_api() -> None:
    from spookd._proto import v1beta1 as api

    routes = set(api.DevicePluginBase.__mapping__(api.DevicePluginBase()))
    assert routes == {
        "/v1beta1.DevicePlugin/GetDevicePluginOptions",
        "/v1beta1.DevicePlugin/ListAndWatch",
        "/v1beta1.DevicePlugin/GetPreferredAllocation",
        "/v1beta1.DevicePlugin/Allocate",
        "/v1beta1.DevicePlugin/PreStartContainer",
    }
    response = api.ContainerAllocateResponse(cdi_devices=[api.CdiDevice(name="vendor.com/gpu=0")])
    # field 5, length-delimited: tag byte 0x2a
    assert bytes(response).startswith(b"\x2a")
