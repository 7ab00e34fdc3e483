"""DRA mode's publisher against a real kube-apiserver: slices, classes, generations, leader changes.

Every test watches this driver's ResourceSlices from before the publisher starts and
replays the watch event by event: at no moment may a device be visible twice (in the
slices of its pool's highest generation), and across a restart or a leader change
no device may go missing either.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.apiserver import ApiServer
from support.drapublisher import (
    Publisher,
    SliceWatch,
    new_namespace,
    pools,
    remove_everything,
    visible,
    wait_until,
)

pytestmark = [pytest.mark.apiserver]

DRIVER = "spookd.skao.int"
SLICES = "/apis/resource.k8s.io/v1/resourceslices"

CONFIG = """\
deviceMapping:
  - hosts: [h1, h2]
    devices:
      - resourceName: example.com/widget
        instanceID: "w0"
        env: {PORT: "5000"}
  - hosts: [h1]
    devices:
      - resourceName: example.com/widget
        instanceID: "w1"
        env: {PORT: "5001"}
      - resourceName: example.com/gadget
        instanceID: "g1"
"""


@pytest.fixture
def cleanup(apiserver: ApiServer) -> Iterator[list[Publisher]]:
    started: list[Publisher] = []
    yield started
    remove_everything(apiserver, started)


def test_publishes_pools_and_classes_and_bumps_generations_without_a_device_twice(
    apiserver: ApiServer, tmp_path: Path, cleanup: list[Publisher]
) -> None:
    api = apiserver.client()
    namespace = new_namespace(api, "dra-publish-1")
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    watch = SliceWatch(apiserver)
    publisher = Publisher(apiserver, config, namespace, "p1", tmp_path / "p1.log")
    cleanup.append(publisher)
    wait_until(lambda: len(visible(watch.current())) == 3, what="three devices published")
    state = pools(watch.current())
    assert state["h1"][1] == {("example.com/widget", "w1"), ("example.com/gadget", "g1")}
    shared = next(name for name in state if name.startswith("shared-"))
    assert state[shared][1] == {("example.com/widget", "w0")}
    classes = api.request(
        "GET",
        "/apis/resource.k8s.io/v1/deviceclasses",
        query={"labelSelector": "app.kubernetes.io/managed-by=spookd"},
    ).json["items"]
    assert sorted((c["metadata"]["name"], c["spec"]["extendedResourceName"]) for c in classes) == [
        ("gadget.example.com", "example.com/gadget"),
        ("widget.example.com", "example.com/widget"),
    ]
    generation = state["h1"][0]

    # An edit of one device: its pool gets a new generation, the other pool is not written.
    before = len(watch.events)
    config.write_text(CONFIG.replace('PORT: "5001"', 'PORT: "6001"'))
    wait_until(lambda: pools(watch.current())["h1"][0] == generation + 1, what="a new generation of h1")
    time.sleep(1)
    changed = {obj["spec"]["pool"]["name"] for _, obj in watch.events[before:]}
    assert changed == {"h1"}

    # w1 moves to the shared pool and w0 to h1 alone: a swap between two pools.
    first, second = CONFIG.split("  - hosts: [h1]\n")
    config.write_text(first.replace("hosts: [h1, h2]", "hosts: [h1]") + "  - hosts: [h1, h2]\n" + second)
    wait_until(
        lambda: (
            ("example.com/widget", "w0") in pools(watch.current()).get("h1", (0, set()))[1]
            and len(visible(watch.current())) == 3
        ),
        what="the swap",
    )
    # A pool that is no longer configured loses its slices.
    config.write_text(
        "deviceMapping:\n  - hosts: [h3]\n    devices:\n      - {resourceName: example.com/widget, instanceID: w9}\n"
    )
    wait_until(lambda: set(pools(watch.current())) == {"h3"}, what="only h3's pool left")
    for state_now in watch.states():
        seen = visible(state_now)
        assert len(seen) == len(set(seen)), seen
    assert publisher.stop() == 0


def test_restart_and_leader_change_write_nothing_and_lose_nothing(
    apiserver: ApiServer, tmp_path: Path, cleanup: list[Publisher]
) -> None:
    api = apiserver.client()
    namespace = new_namespace(api, "dra-publish-2")
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    first = Publisher(apiserver, config, namespace, "first", tmp_path / "first.log")
    cleanup.append(first)
    watch = SliceWatch(apiserver)
    wait_until(lambda: len(visible(watch.current())) == 3, what="three devices published")
    wait_until(lambda: first.said("leading"), what="the first publisher leading")
    second = Publisher(apiserver, config, namespace, "second", tmp_path / "second.log")
    cleanup.append(second)
    time.sleep(2)
    assert not second.said('"leading"')
    settled = len(watch.events)
    # A graceful stop releases the Lease: the second takes over at once.
    assert first.stop() == 0
    wait_until(lambda: second.said('"leading"'), timeout=15, what="the second publisher leading")
    time.sleep(2)
    # A killed leader: a third takes over after the Lease duration by observation.
    third = Publisher(apiserver, config, namespace, "third", tmp_path / "third.log")
    cleanup.append(third)
    time.sleep(1)
    second.stop(signal.SIGKILL)
    wait_until(lambda: third.said('"leading"'), timeout=20, what="the third publisher leading")
    time.sleep(2)
    assert watch.events[settled:] == []
    for state_now in watch.states():
        seen = visible(state_now)
        if state_now:
            assert sorted(seen) == sorted(set(seen))
    assert len(visible(watch.current())) == 3
    watch.close()
