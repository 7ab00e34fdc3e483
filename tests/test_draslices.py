"""DRA mode's pure parts: configuration → pools, slices and classes; the write plan; DRA-only validation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from spookd.config import ConfigInvalid, load_config
from spookd.config.dralimits import check_dra
from spookd.draplan import Plan, pool_states
from spookd.draplan import plan as make_plan
from spookd.draslices import (
    DRIVER,
    MAX_DEVICES_PER_SLICE,
    Pool,
    class_name,
    desired_pools,
    device_classes,
    device_key,
    pool_slices,
)

#: The node selector of a one-host pool (h1).
ONE_HOST = {
    "nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["h1"]}]}
    ]
}
SHARED = """\
deviceMapping:
  - hosts: [h1, h2]
    devices:
      - resourceName: example.com/widget
        instanceID: "W0"
        env: {PORT: "5000", BAND: "low"}
  - hosts: [h1]
    devices:
      - resourceName: example.com/widget
        instanceID: "w1"
        env: {PORT: "5001"}
      - resourceName: example.com/widget
        instanceID: "W0"
        env: {PORT: "5000", BAND: "low"}
"""


def _slices(pools: dict[str, Pool], generation: int = 1) -> list[dict[str, Any]]:
    return [s for pool in pools.values() for s in pool_slices(pool, generation)]


def _published(writes: Plan, start: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Every state of the cluster's slices while the plan's writes run one by one."""
    cluster = {s["metadata"]["name"]: s for s in start}
    states = [list(cluster.values())]
    for step in [*writes.remove, *writes.add]:
        for obj in step.slices:
            cluster[obj["metadata"]["name"]] = obj
            states.append(list(cluster.values()))
        for name in step.stale:
            del cluster[name]
            states.append(list(cluster.values()))
    return states


def _devices_seen(slices: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Devices a consumer sees: per pool, only the slices of its highest generation."""
    best: dict[str, int] = {}
    for s in slices:
        pool = s["spec"]["pool"]
        best[pool["name"]] = max(best.get(pool["name"], 0), pool["generation"])
    seen: list[tuple[str, str]] = []
    for s in slices:
        pool = s["spec"]["pool"]
        if pool["generation"] == best[pool["name"]]:
            seen.extend(k for d in s["spec"]["devices"] if (k := device_key(d)) is not None)
    return seen


def test_a_device_of_several_mappings_is_in_the_pool_of_all_its_hosts_once() -> None:
    pools = desired_pools(load_config(SHARED, "t"))
    assert [p.hosts for p in pools.values()] == [("h1",), ("h1", "h2")]
    single, shared = pools.values()
    assert single.keys() == {("example.com/widget", "w1")}
    assert shared.keys() == {("example.com/widget", "W0")}
    (one,) = pool_slices(single, 3)
    # One host too: a slice with spec.nodeName is deleted by that node's kubelet as it starts.
    assert "nodeName" not in one["spec"]
    assert one["spec"]["nodeSelector"] == ONE_HOST
    assert one["spec"]["pool"] == {"name": "h1", "generation": 3, "resourceSliceCount": 1}
    (both,) = pool_slices(shared, 1)
    assert both["spec"]["nodeSelector"] == {
        "nodeSelectorTerms": [
            {
                "matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": ["h1", "h2"]}
                ]
            }
        ]
    }
    (device,) = both["spec"]["devices"]
    assert device["attributes"] == {
        f"{DRIVER}/resource": {"string": "example.com/widget"},
        f"{DRIVER}/instanceID": {"string": "W0"},
        "env.spookd.skao.int/BAND": {"string": "low"},
        "env.spookd.skao.int/PORT": {"string": "5000"},
    }
    # Upper case is not a DNS label: the name is cleaned and made unique with a digest.
    assert device["name"].startswith("widget-w0-")
    assert len(device["name"]) == len("widget-w0-") + 8


def test_large_pools_are_split_within_the_limit_and_names_stay_unique() -> None:
    devices = "\n".join(
        f'      - {{resourceName: example.com/widget, instanceID: "d{i}"}}\n'
        f'      - {{resourceName: other.org/widget, instanceID: "d{i}"}}'
        for i in range(100)
    )
    config = load_config(f"deviceMapping:\n  - hosts: [h1]\n    devices:\n{devices}\n", "t")
    slices = _slices(desired_pools(config))
    assert [len(s["spec"]["devices"]) for s in slices] == [MAX_DEVICES_PER_SLICE] * 3 + [200 - 192]
    assert {s["spec"]["pool"]["resourceSliceCount"] for s in slices} == {4}
    names = [d["name"] for s in slices for d in s["spec"]["devices"]]
    assert len(set(names)) == 200
    assert all(len(n) <= 63 for n in names)


def test_one_class_per_resource_with_cel_and_the_extended_resource_name() -> None:
    classes = device_classes(load_config(SHARED, "t"))
    assert [c["metadata"]["name"] for c in classes] == ["widget.example.com"]
    spec = classes[0]["spec"]
    assert spec["extendedResourceName"] == "example.com/widget"
    assert spec["selectors"] == [
        {
            "cel": {
                "expression": 'device.driver == "spookd.skao.int" && '
                'device.attributes["spookd.skao.int"].resource == "example.com/widget"'
            }
        }
    ]
    assert class_name("example.com/Big_One").startswith("big-one.example.com-")


def test_unchanged_slices_need_no_write() -> None:
    pools = desired_pools(load_config(SHARED, "t"))
    assert make_plan(pool_states(_slices(pools, 7)), pools).empty()


def test_a_change_bumps_the_generation_of_every_slice_of_the_pool() -> None:
    before = desired_pools(load_config(SHARED, "t"))
    after = desired_pools(load_config(SHARED.replace('PORT: "5001"', 'PORT: "6001"'), "t"))
    writes = make_plan(pool_states(_slices(before, 4)), after)
    assert not writes.remove
    (step,) = writes.add
    assert step.pool == "h1"
    assert [s["spec"]["pool"]["generation"] for s in step.slices] == [5]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # W0 leaves the shared pool for h1's own pool, w1 goes the other way: a swap.
        (SHARED, SHARED.replace("hosts: [h1, h2]", "hosts: [h9, h2]").replace("[h1]\n", "[h1, h2]\n")),
        # The shared pool disappears; its device now belongs to h1 alone.
        (SHARED, SHARED.replace("hosts: [h1, h2]", "hosts: [h1]")),
        # A new host joins the shared device.
        (SHARED, SHARED.replace("hosts: [h1, h2]", "hosts: [h1, h2, h3]")),
    ],
)
def test_no_device_is_ever_published_twice_while_the_plan_runs(old: str, new: str) -> None:
    start = _slices(desired_pools(load_config(old, "t")), 2)
    target = desired_pools(load_config(new, "t"))
    writes = make_plan(pool_states(start), target)
    states = _published(writes, start)
    for state in states:
        seen = _devices_seen(state)
        assert len(seen) == len(set(seen)), json.dumps(seen)
    final = pool_states(states[-1])
    assert make_plan(final, target).empty()
    assert set(final) == set(target)


def test_health_taints_change_the_pool() -> None:
    pools = desired_pools(load_config(SHARED, "t"))
    current = pool_states(_slices(pools))
    writes = make_plan(current, pools, unhealthy={("example.com/widget", "w1")})
    (step,) = writes.add
    (device,) = step.slices[0]["spec"]["devices"]
    assert device["taints"] == [
        {"key": "spookd.skao.int/unhealthy", "value": "probe-failed", "effect": "NoSchedule"}
    ]


def test_dra_only_errors_name_their_place() -> None:
    text = (
        "deviceMapping:\n"
        "  - hosts: [h1, " + "n" * 70 + "]\n"
        "    devices:\n"
        "      - resourceName: example.com/widget\n"
        '        instanceID: "w1"\n'
        "        env:\n"
        "          A_VERY_LONG_ENVIRONMENT_VARIABLE_NAME: x\n"
        "          SHORT: " + "v" * 65 + "\n"
    )
    config = load_config(text, "lab.yaml")
    with pytest.raises(ConfigInvalid) as caught:
        check_dra(config, text, "lab.yaml")
    shown = [str(e) for e in caught.value.errors]
    assert shown[0].startswith("lab.yaml:2:17: deviceMapping[0].hosts[1]: node name `nnn")
    assert "kubernetes.io/hostname" in shown[0]
    assert shown[1].startswith(
        "lab.yaml:7:11: deviceMapping[0].devices[0].env.A_VERY_LONG_ENVIRONMENT_VARIABLE_NAME:"
    )
    assert "at most 32" in shown[1]
    assert shown[2].startswith("lab.yaml:8:11: deviceMapping[0].devices[0].env.SHORT: env value")
    assert "65 bytes" in shown[2]
    check_dra(load_config(SHARED, "t"), SHARED, "t")


def test_a_selector_mapping_is_one_pool_whose_slices_select_its_nodes_by_label() -> None:
    text = (
        "deviceMapping:\n"
        "  - nodeSelector:\n"
        "      matchLabels: {lab: one}\n"
        "      matchExpressions:\n"
        "        - {key: rack, operator: In, values: [r2, r1]}\n"
        "        - {key: broken, operator: DoesNotExist}\n"
        "    devices:\n"
        "      - resourceName: example.com/widget\n"
        '        instanceID: "w1"\n'
        "  - hosts: [h1]\n"
        "    devices:\n"
        "      - resourceName: example.com/widget\n"
        '        instanceID: "w2"\n'
    )
    config = load_config(text, "lab.yaml")
    check_dra(config, text, "lab.yaml")
    pools = desired_pools(config)
    (selected,) = [p for p in pools.values() if p.selector is not None]
    assert selected.name.startswith("selector-")
    assert selected.hosts == ()
    assert [d.instance_id for _, d in selected.devices] == ["w1"]
    (piece,) = pool_slices(selected, 1)
    assert "nodeName" not in piece["spec"]
    assert piece["spec"]["nodeSelector"] == {
        "nodeSelectorTerms": [
            {
                "matchExpressions": [
                    {"key": "lab", "operator": "In", "values": ["one"]},
                    {"key": "rack", "operator": "In", "values": ["r1", "r2"]},
                    {"key": "broken", "operator": "DoesNotExist"},
                ]
            }
        ]
    }
    assert pools["h1"].selector is None
    assert pool_slices(pools["h1"], 1)[0]["spec"]["nodeSelector"] == ONE_HOST
    edited = load_config(text.replace("lab: one", "lab: two"), "lab.yaml")
    renamed = {name for name in desired_pools(edited) if name.startswith("selector-")}
    assert renamed
    assert selected.name not in renamed


def test_what_one_selector_term_cannot_say_and_seats_are_refused_in_dra_mode_with_their_place() -> None:
    text = (
        "deviceMapping:\n"
        "  - hosts: [h1]\n"
        "    nodeSelector:\n"
        "      matchLabels: {lab: one}\n"
        "    devices:\n"
        "      - resourceName: example.com/widget\n"
        '        instanceID: "w1"\n'
        "      - resourceName: example.com/widget\n"
        '        instanceID: "w3"\n'
        "        capacity: 2\n"
        "  - nodeSelector:\n"
        "      matchLabels: {lab: two}\n"
        "    devices:\n"
        "      - resourceName: example.com/widget\n"
        '        instanceID: "w1"\n'
    )
    config = load_config(text, "lab.yaml")
    with pytest.raises(ConfigInvalid) as caught:
        check_dra(config, text, "lab.yaml")
    shown = [str(e) for e in caught.value.errors]
    assert len(shown) == 4, shown
    assert shown[0].startswith("lab.yaml:4:7: deviceMapping[0].nodeSelector: DRA mode selects a pool's nodes")
    assert shown[1].startswith("lab.yaml:7:9: deviceMapping[0].devices[0].instanceID: device `w1` of a")
    assert shown[2].startswith("lab.yaml:10:9: deviceMapping[0].devices[1].capacity: capacity 2")
    assert shown[3].startswith("lab.yaml:15:9: deviceMapping[1].devices[0].instanceID: device `w1` of a")
