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


def test_plugin_registration_wire_names_match_the_kubelet_api() -> None:
    from spookd._proto import pluginregistration as reg

    routes = set(reg.RegistrationBase.__mapping__(reg.RegistrationBase()))
    assert routes == {
        "/pluginregistration.Registration/GetInfo",
        "/pluginregistration.Registration/NotifyRegistrationStatus",
    }
    info = reg.PluginInfo(type="DRAPlugin", supported_versions=["v1.DRAPlugin"])
    # field 1 (type), length-delimited: tag byte 0x0a; field 4: tag byte 0x22
    assert bytes(info) == b"\x0a\x09DRAPlugin\x22\x0cv1.DRAPlugin"


def test_dra_wire_names_match_the_kubelet_api() -> None:
    from spookd._proto.k8s.io.kubelet.pkg.apis.dra import v1 as dra

    routes = set(dra.DraPluginBase.__mapping__(dra.DraPluginBase()))
    assert routes == {
        "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources",
        "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodeUnprepareResources",
    }
    device = dra.Device(pool_name="p", device_name="d", cdi_device_ids=["k8s.spookd.dev/claim=x"])
    # fields 2, 3, 4 length-delimited (0x12, 0x1a, 0x22); share_id (5, optional) absent
    assert bytes(device) == b"\x12\x01p\x1a\x01d\x22\x16k8s.spookd.dev/claim=x"
    answer = dra.NodePrepareResourcesResponse(claims={"uid": dra.NodePrepareResourceResponse(error="e")})
    decoded = dra.NodePrepareResourcesResponse.parse(bytes(answer))
    assert decoded.claims["uid"].error == "e"
