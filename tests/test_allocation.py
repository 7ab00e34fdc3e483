"""Allocate environment and preferred allocation (SPEC §5)."""

from __future__ import annotations

from pathlib import Path

import walkthrough
from hypothesis import given
from hypothesis import strategies as st

from spookd.allocation import container_env, preferred_allocation
from spookd.config import Device, load_config

WALKTHROUGH = Path(__file__).parent / "data" / "good" / "walkthrough.yaml"


def test_walkthrough_environment_is_exactly_the_spec() -> None:
    node = load_config(WALKTHROUGH.read_text(), "w").for_node("minikube")
    env = {
        **container_env("example.com/widget", [node["example.com/widget"]["0001"]]),
        **container_env("example.com/thingamajig", [node["example.com/thingamajig"]["A1234"]]),
    }
    assert env == walkthrough.ENV


def test_devices_are_numbered_in_instance_id_order() -> None:
    devices = [Device("e.com/w", "b", (("IP", "2"),)), Device("e.com/w", "a", (("IP", "1"),))]
    env = container_env("e.com/w", devices)
    assert env["ECOM_W_DEV0_ID"] == "a"
    assert env["ECOM_W_DEV1_ID"] == "b"
    assert env["ECOM_W_IP"] == "1"
    assert env["ECOM_W_NUM_DEVICES"] == "2"
    assert "ECOM_W_DEV2_ID" not in env


def test_preferred_allocation_takes_must_include_then_lowest() -> None:
    assert preferred_allocation(["3", "1", "2", "4"], ["4"], 3) == ["4", "1", "2"]
    assert preferred_allocation(["1"], [], 0) == []
    assert preferred_allocation(["2", "1"], [], 5) == ["1", "2"]


@given(
    st.sets(st.text("abc123", min_size=1, max_size=3), max_size=8),
    st.data(),
)
def test_preferred_allocation_respects_size_and_must_include(
    available: set[str], data: st.DataObject
) -> None:
    must = data.draw(st.lists(st.sampled_from(sorted(available)), unique=True) if available else st.just([]))
    size = data.draw(st.integers(min_value=len(must), max_value=len(available)))
    chosen = preferred_allocation(sorted(available), must, size)
    assert chosen[: len(must)] == must
    assert len(chosen) == size
    assert len(set(chosen)) == len(chosen)
    assert set(chosen) <= available


def test_preferred_allocation_avoids_devices_held_elsewhere() -> None:
    assert preferred_allocation(["1", "2", "3"], [], 2, avoid={"1"}) == ["2", "3"]
    assert preferred_allocation(["1", "2", "3"], [], 3, avoid={"1"}) == ["2", "3", "1"]
    assert preferred_allocation(["1", "2"], ["1"], 1, avoid={"1"}) == ["1"]
