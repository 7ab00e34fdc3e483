"""``capacity: N`` on a device (issue #17): seats, their names, validation, env and preference.

Pure unit tests; the real device manager and API server are in test_capacity_node.py.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import walkthrough
from hypothesis import given
from hypothesis import strategies as st

from spookd.allocation import container_env, preferred_allocation, seat_offset
from spookd.config import ConfigInvalid, Device, load_config
from spookd.config.crosscheck import DeviceIndex
from spookd.config.rules import MAX_CAPACITY, instance_id_problem
from spookd.deviceplugin.snapshots import DeviceList
from spookd.naming import seat_ids, seat_of

LIC = "example.com/licence"
instance_ids = st.text("abcXYZ019._-", min_size=1, max_size=63).filter(
    lambda i: instance_id_problem(i) is None
)


def lab(devices: str, *, exclusive: bool = False, hosts: str = "[node-a]") -> str:
    top = "exclusive: true\n" if exclusive else ""
    return f"{top}deviceMapping:\n  - hosts: {hosts}\n    devices:\n{devices}"


# -- naming -----------------------------------------------------------------


def test_seat_one_is_the_instance_id_and_later_seats_carry_a_suffix() -> None:
    assert seat_ids("0001", 1) == ["0001"]
    assert seat_ids("0001", 3) == ["0001", "0001::2", "0001::3"]
    assert seat_of("0001") == ("0001", 1)
    assert seat_of("0001::3") == ("0001", 3)


@given(instance_ids, st.integers(min_value=1, max_value=40))
def test_every_seat_names_its_device_and_number(instance: str, capacity: int) -> None:
    seats = seat_ids(instance, capacity)
    assert len(set(seats)) == capacity
    assert [seat_of(s) for s in seats] == [(instance, n) for n in range(1, capacity + 1)]


@given(
    instance_ids, instance_ids, st.integers(min_value=1, max_value=20), st.integers(min_value=1, max_value=20)
)
def test_seats_of_different_devices_never_collide(a: str, b: str, cap_a: int, cap_b: int) -> None:
    if a != b:
        assert not set(seat_ids(a, cap_a)) & set(seat_ids(b, cap_b))
    # a seat suffix can never be a valid instance ID of its own
    assert all(instance_id_problem(s) is not None for s in seat_ids(a, cap_a)[1:])


# -- validation -------------------------------------------------------------


def test_capacity_defaults_to_one_and_is_read() -> None:
    config = load_config(
        lab(
            f'      - {{resourceName: {LIC}, instanceID: "a", capacity: 5}}\n'
            f'      - {{resourceName: {LIC}, instanceID: "b"}}\n'
        ),
        "t.yaml",
    )
    devices = config.for_node("node-a")[LIC]
    assert devices["a"].capacity == 5
    assert devices["b"].capacity == 1
    assert devices["a"].seats() == ["a", "a::2", "a::3", "a::4", "a::5"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "capacity 0 is out of range"),
        ("-2", "capacity -2 is out of range"),
        (str(MAX_CAPACITY + 1), f"a whole number from 1 to {MAX_CAPACITY}"),
        ('"3"', "write it without quotes: capacity: 3"),
        ("2.5", "capacity must be a whole number from 1 to 1000"),
        ("true", "got a boolean"),
        ("[2]", "capacity must be a whole number"),
        ("null", "capacity must be a whole number"),
        ("many", "capacity must be a whole number"),
    ],
)
def test_a_bad_capacity_is_a_located_error(value: str, message: str) -> None:
    text = lab(f'      - resourceName: {LIC}\n        instanceID: "a"\n        capacity: {value}\n')
    with pytest.raises(ConfigInvalid) as caught:
        load_config(text, "lab.yaml")
    (error,) = caught.value.errors
    assert error.path == "deviceMapping[0].devices[0].capacity"
    assert (error.source, error.line, error.column) == ("lab.yaml", 6, 19)
    assert message in error.message, error.message


def test_one_device_with_two_capacities_is_an_error() -> None:
    text = lab(
        f'      - {{resourceName: {LIC}, instanceID: "a", capacity: 2}}\n'
        f'      - {{resourceName: {LIC}, instanceID: "a", capacity: 3}}\n'
    )
    with pytest.raises(ConfigInvalid, match="every occurrence of a device must be identical"):
        load_config(text, "t.yaml")


def test_env_collisions_count_every_seat() -> None:
    # e.com/x-dev1 sets E_COM_X_DEV1_..., which e.com/x's DEV1_ names reach only with two seats.
    one, two = DeviceIndex[None](), DeviceIndex[None]()
    for index, capacity in ((one, 1), (two, 2)):
        index.add(Device("ecom/x", "a", (("IP", "1"),), capacity=capacity), None, None)
        index.add(Device("ecom/x-dev1", "b"), None, None)
    assert not list(one.collisions())
    assert [c[2] for c in two.collisions()] == ["ECOM_X_DEV1_ID"]


# -- environment (SPEC §5) --------------------------------------------------


def test_capacity_one_leaves_the_walkthrough_environment_exactly_the_spec() -> None:
    text = walkthrough.CONFIG.replace('instanceID: "0001",', 'instanceID: "0001", capacity: 1,')
    assert "capacity: 1" in text
    node = load_config(text, "w").for_node("minikube")
    widget = node["example.com/widget"]["0001"]
    assert widget.seats() == ["0001"]
    env = {
        **container_env("example.com/widget", [widget]),
        **container_env("example.com/thingamajig", [node["example.com/thingamajig"]["A1234"]]),
    }
    assert env == walkthrough.ENV


def test_a_seat_gives_the_device_environment_and_two_seats_list_it_twice() -> None:
    device = Device(LIC, "0007", (("SERVER", "lic.lab"),), capacity=3)
    assert container_env(LIC, [device]) == container_env(LIC, [Device(LIC, "0007", (("SERVER", "lic.lab"),))])
    env = container_env(LIC, [device, device])
    assert env["EXAMPLECOM_LICENCE_NUM_DEVICES"] == "2"
    assert env["EXAMPLECOM_LICENCE_DEV0_ID"] == env["EXAMPLECOM_LICENCE_DEV1_ID"] == "0007"
    assert env["EXAMPLECOM_LICENCE_ID"] == "0007"
    assert not any("SEAT" in key for key in env)


# -- exclusive: one claim per seat ----------------------------------------


def test_every_seat_of_a_shared_device_is_claimed_on_its_own() -> None:
    config = load_config(
        lab(
            f'      - {{resourceName: {LIC}, instanceID: "a", capacity: 3}}\n'
            f'      - {{resourceName: {LIC}, instanceID: "b"}}\n',
            exclusive=True,
            hosts="[node-a, node-b]",
        ),
        "t.yaml",
    )
    assert config.shared_devices() == {(LIC, "a"), (LIC, "a::2"), (LIC, "a::3"), (LIC, "b")}


# -- ListAndWatch: one device per seat, the device's health on each --------


def test_device_list_advertises_each_seat_with_the_device_health() -> None:
    checked = load_config(
        lab(
            f'      - {{resourceName: {LIC}, instanceID: "a", capacity: 2, healthCheck: {{path: /x}}}}\n'
            f'      - {{resourceName: {LIC}, instanceID: "b", capacity: 2}}\n'
        ),
        "t.yaml",
    ).for_node("node-a")[LIC]
    devices = DeviceList(LIC, list(checked.values()), set(), lambda stream, opened: None)
    assert devices.get("a::2") is checked["a"]
    assert devices.get("b") is checked["b"]
    assert devices.get("a::3") is None
    assert devices.capacities == {"a": 2, "b": 2}
    assert devices.devices == dict(checked), "the reconciler still sees one entry per device"
    health = devices._effective_health()
    assert health == {"a": "Unhealthy", "a::2": "Unhealthy", "b": "Healthy", "b::2": "Healthy"}
    devices.set_health("a", "Healthy")
    assert set(devices._effective_health().values()) == {"Healthy"}
    devices.set_blocked({"b::2"})
    assert devices._effective_health() == {
        "a": "Healthy",
        "a::2": "Healthy",
        "b": "Healthy",
        "b::2": "Unhealthy",
    }
    # more seats keep what the probe said
    devices.update([msgspec.structs.replace(checked["a"], capacity=3), checked["b"]])
    assert devices._effective_health()["a::3"] == "Healthy"


# -- GetPreferredAllocation: distinct devices first ---------------------------


def test_preference_spreads_over_distinct_devices_first() -> None:
    caps = {"a": 2, "b": 2}
    free = ["a", "a::2", "b", "b::2"]
    assert preferred_allocation(free, [], 1, capacity=caps) == ["a"]
    assert preferred_allocation(free, [], 2, capacity=caps) == ["a", "b"]
    assert preferred_allocation(free, [], 3, capacity=caps) == ["a", "b", "a::2"]
    # a is held once here already: b is the emptier device
    assert preferred_allocation(["a::2", "b", "b::2"], [], 1, capacity=caps) == ["b"]
    # must_include counts as taken
    assert preferred_allocation(free, ["a::2"], 2, capacity=caps) == ["a::2", "b"]
    # among equally full devices, one this container has no seat of yet
    assert preferred_allocation(["a", "a::2", "b::2"], [], 2, capacity=caps) == ["a", "b::2"]
    # seats held elsewhere are taken too, and are offered last
    assert preferred_allocation(free, [], 1, avoid={"b"}, capacity=caps) == ["a"]
    assert preferred_allocation(free, [], 4, avoid={"a", "a::2"}, capacity=caps) == ["b", "b::2", "a", "a::2"]


def test_each_node_starts_at_its_own_seat_and_still_spreads() -> None:
    caps = {"a": 3, "b": 3}
    free = [*seat_ids("a", 3), *seat_ids("b", 3)]
    assert preferred_allocation(free, [], 2, capacity=caps, first_seat=1) == ["a::2", "b::2"]
    assert preferred_allocation(free, [], 3, capacity=caps, first_seat=2) == ["a::3", "b::3", "a"]
    assert preferred_allocation(free, [], 1, capacity=caps, first_seat=5) == ["a::3"]
    # without seats nothing turns
    assert preferred_allocation(["2", "1"], [], 1, first_seat=7) == ["1"]
    assert seat_offset("rig-a") == seat_offset("rig-a") != seat_offset("rig-c")


@given(st.lists(st.text("abc123", min_size=1, max_size=3), unique=True, max_size=8), st.data())
def test_without_seats_the_preference_is_the_lowest_sorted_ids(ids: list[str], data: st.DataObject) -> None:
    avoid = data.draw(st.sets(st.sampled_from(ids)) if ids else st.just(set[str]()))
    size = data.draw(st.integers(min_value=0, max_value=len(ids)))
    old = sorted(ids, key=lambda i: (i in avoid, i))[:size]
    assert preferred_allocation(ids, [], size, avoid=avoid) == old
    assert preferred_allocation(ids, [], size, avoid=avoid, capacity=dict.fromkeys(ids, 1)) == old


@given(
    st.dictionaries(st.sampled_from("abcdef"), st.integers(min_value=1, max_value=5), min_size=1),
    st.data(),
)
def test_the_preference_keeps_devices_within_one_seat_of_each_other(
    caps: dict[str, int], data: st.DataObject
) -> None:
    seats = [s for d, n in caps.items() for s in seat_ids(d, n)]
    available = data.draw(st.lists(st.sampled_from(seats), unique=True))
    size = data.draw(st.integers(min_value=0, max_value=len(available)))
    first_seat = data.draw(st.integers(min_value=0, max_value=10))
    chosen = preferred_allocation(available, [], size, capacity=caps, first_seat=first_seat)
    assert len(chosen) == size
    assert len(set(chosen)) == size
    assert set(chosen) <= set(available)
    taken = collections.Counter(caps)
    for seat in available:
        taken[seat_of(seat)[0]] -= 1
    for seat in chosen:
        taken[seat_of(seat)[0]] += 1
    # every device still offering a seat is at least as full as the fullest one picked from, minus one
    left = collections.Counter(seat_of(s)[0] for s in set(available) - set(chosen))
    picked_from = {seat_of(s)[0] for s in chosen}
    if picked_from and left:
        assert min(taken[d] for d in left) >= max(taken[d] for d in picked_from) - 1


# -- spookd render ------------------------------------------------------------


def test_render_shows_every_seat_and_a_seat_environment(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(lab(f'      - {{resourceName: {LIC}, instanceID: "0007", capacity: 3, env: {{S: x}}}}\n'))
    args = [sys.executable, "-m", "spookd", "render", str(path), "--node", "node-a", "--output", "json"]
    shown = json.loads(
        subprocess.run(
            [*args, "--allocate", f"{LIC}=0007::3"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert shown["resources"] == {LIC: ["0007", "0007::2", "0007::3"]}
    assert shown["env"]["EXAMPLECOM_LICENCE_ID"] == "0007"
    unknown = subprocess.run(
        [*args, "--allocate", f"{LIC}=0007::4"], capture_output=True, text=True, check=False
    )
    assert unknown.returncode == 2
    assert "has no device 0007::4" in unknown.stderr
