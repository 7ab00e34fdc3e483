"""The pure core of DRA mode on the node: a claim's allocation → CDI spec content (spookd.cdi)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from spookd import cdi
from spookd.config.model import Device, DeviceNode

DRIVER = "spookd.skao.int"
WIDGET = "example.com/widget"


def _claim(results: list[dict[str, str]] | None) -> dict[str, Any]:
    status: dict[str, Any] = {} if results is None else {"allocation": {"devices": {"results": results}}}
    return {"metadata": {"namespace": "ns", "name": "c", "uid": "u1"}, "status": status}


def _slice(
    generation: int, devices: dict[str, tuple[str, str]], *, qualified: bool = False
) -> dict[str, Any]:
    prefix = f"{DRIVER}/" if qualified else ""
    return {
        "spec": {
            "driver": DRIVER,
            "pool": {"name": "p", "generation": generation},
            "devices": [
                {
                    "name": name,
                    "attributes": {
                        f"{prefix}resource": {"string": resource},
                        f"{prefix}instanceID": {"string": instance},
                    },
                }
                for name, (resource, instance) in devices.items()
            ],
        }
    }


def test_results_of_other_drivers_are_left_to_them() -> None:
    claim = _claim(
        [
            {"request": "a", "driver": DRIVER, "pool": "p", "device": "d1"},
            {"request": "b", "driver": "gpu.example.com", "pool": "g", "device": "gpu0"},
        ]
    )
    assert cdi.allocated_devices(claim, DRIVER) == [cdi.AllocatedDevice("a", "p", "d1")]


def test_a_claim_without_our_driver_or_allocation_is_refused() -> None:
    with pytest.raises(cdi.PrepareError, match=r"names gpu\.example\.com, not spookd\.skao\.int"):
        cdi.allocated_devices(_claim([{"request": "a", "driver": "gpu.example.com"}]), DRIVER)
    with pytest.raises(cdi.PrepareError, match="ResourceClaim ns/c is not allocated yet"):
        cdi.allocated_devices(_claim(None), DRIVER)


def test_only_the_newest_pool_generation_counts_and_qualified_names_are_read() -> None:
    slices = [_slice(1, {"old": (WIDGET, "0001")}), _slice(2, {"new": (WIDGET, "0002")}, qualified=True)]
    assert cdi.slice_identities(slices, DRIVER, "p") == {"new": (WIDGET, "0002")}
    assert cdi.slice_identities(slices, DRIVER, "other") == {}


def test_unknown_devices_are_named_with_the_reason() -> None:
    claim = _claim([])
    allocated = [cdi.AllocatedDevice("a", "p", "d1"), cdi.AllocatedDevice("a", "p", "d2")]
    identities = {"p": {"d2": (WIDGET, "0009")}}
    with pytest.raises(cdi.PrepareError) as caught:
        cdi.resolve(claim, allocated, identities, {WIDGET: {}}, "n1")
    assert str(caught.value) == (
        "ResourceClaim ns/c: unknown device p/d1 (in no published ResourceSlice), "
        "p/d2 (example.com/widget 0009 is not configured for node n1); "
        "check that the publisher and this node read the same configuration"
    )


def test_one_cdi_device_per_request_numbered_in_id_order() -> None:
    d1 = Device(WIDGET, "0001", env=(("IP", "10.0.0.1"),))
    d2 = Device(
        WIDGET, "0002", env=(("IP", "10.0.0.2"),), device_nodes=(DeviceNode("/dev/null", "/dev/w"),),
        cdi_devices=("vendor.com/x=1",),
    )  # fmt: skip
    pairs = [
        (cdi.AllocatedDevice("two/sub", "p", "w2"), d2),
        (cdi.AllocatedDevice("two/sub", "p", "w1"), d1),
    ]
    prepared = cdi.prepare_claim(DRIVER, "u1", "ns", "c", pairs)
    assert prepared.spec_file == "spookd.skao.int-claim_u1.json"
    assert prepared.devices == (
        cdi.PreparedDevice(("two",), "p", "w2", ("spookd.skao.int/claim=u1-two", "vendor.com/x=1")),
        cdi.PreparedDevice(("two",), "p", "w1", ()),
    )
    spec = json.loads(prepared.spec)
    assert spec["kind"] == "spookd.skao.int/claim"
    (device,) = spec["devices"]
    assert device["name"] == "u1-two"
    assert device["containerEdits"]["env"] == [
        "EXAMPLECOM_WIDGET_DEV0_ID=0001",
        "EXAMPLECOM_WIDGET_DEV0_IP=10.0.0.1",
        "EXAMPLECOM_WIDGET_DEV0_TYPE=example.com/widget",
        "EXAMPLECOM_WIDGET_DEV1_ID=0002",
        "EXAMPLECOM_WIDGET_DEV1_IP=10.0.0.2",
        "EXAMPLECOM_WIDGET_DEV1_TYPE=example.com/widget",
        "EXAMPLECOM_WIDGET_ID=0001",
        "EXAMPLECOM_WIDGET_IP=10.0.0.1",
        "EXAMPLECOM_WIDGET_NUM_DEVICES=2",
        "EXAMPLECOM_WIDGET_TYPE=example.com/widget",
    ]
    assert device["containerEdits"]["deviceNodes"] == [
        {"path": "/dev/w", "hostPath": "/dev/null", "permissions": "rw"}
    ]


def test_checkpoint_round_trip_and_unreadable_file() -> None:
    prepared = cdi.prepare_claim(
        DRIVER, "u1", "ns", "c", [(cdi.AllocatedDevice("a", "p", "d"), Device(WIDGET, "1"))]
    )
    checkpoint = cdi.Checkpoint(claims={"u1": prepared})
    assert cdi.decode_checkpoint(cdi.encode_checkpoint(checkpoint), "f") == checkpoint
    with pytest.raises(cdi.PrepareError, match=r"^/x/checkpoint\.json: unreadable checkpoint"):
        cdi.decode_checkpoint(b"{not json", "/x/checkpoint.json")
