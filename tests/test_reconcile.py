"""The pure reconciler (SPEC §4)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from spookd.config import Device, NodeDevices
from spookd.reconcile import Action, StartResource, StopResource, UpdateResource, diff, summary

resources = st.sampled_from(["a.com/x", "a.com/y", "b.org/z", "c.io/w"])
ids = st.sampled_from(["1", "2", "3", "A"])
envs = st.sampled_from([(), (("IP", "10.0.0.1"),), (("IP", "10.0.0.2"), ("PORT", "1"))])


def apply(running: NodeDevices, actions: list[Action]) -> dict[str, dict[str, Device]]:
    """The running state after ``actions`` succeed, as the shell records it."""
    state = {resource: dict(devices) for resource, devices in running.items()}
    for action in actions:
        if isinstance(action, StopResource):
            state.pop(action.resource_name, None)
        else:
            state[action.resource_name] = {d.instance_id: d for d in action.devices}
    return state


@st.composite
def states(draw: st.DrawFn) -> dict[str, dict[str, Device]]:
    state: dict[str, dict[str, Device]] = {}
    for name in draw(st.sets(resources)):
        chosen = draw(st.sets(ids, min_size=0, max_size=4))
        state[name] = {i: Device(name, i, draw(envs)) for i in chosen}
    return state


@given(states(), states())
def test_applying_the_diff_yields_the_desired_state(
    desired: dict[str, dict[str, Device]], running: dict[str, dict[str, Device]]
) -> None:
    assert apply(running, diff(desired, running)) == desired


@given(states(), states())
def test_reconciling_twice_does_nothing(
    desired: dict[str, dict[str, Device]], running: dict[str, dict[str, Device]]
) -> None:
    after = apply(running, diff(desired, running))
    assert diff(desired, after) == []


def test_actions_per_kind_of_change() -> None:
    widget = Device("e.com/widget", "1", (("IP", "a"),))
    running = {"e.com/widget": {"1": widget}, "e.com/old": {"1": Device("e.com/old", "1")}}
    desired = {
        "e.com/widget": {"1": Device("e.com/widget", "1", (("IP", "b"),))},
        "e.com/new": {"9": Device("e.com/new", "9")},
    }
    actions = diff(desired, running)
    assert actions == [
        StopResource("e.com/old"),
        StartResource("e.com/new", (Device("e.com/new", "9"),)),
        UpdateResource("e.com/widget", (Device("e.com/widget", "1", (("IP", "b"),)),)),
    ]
    assert summary(actions) == {
        "added": ["e.com/new"],
        "changed": ["e.com/widget"],
        "removed": ["e.com/old"],
    }


def test_unchanged_resource_yields_no_action() -> None:
    state = {"e.com/w": {"1": Device("e.com/w", "1")}}
    assert diff(state, {"e.com/w": {"1": Device("e.com/w", "1")}}) == []
