"""Cross-host exclusivity under what a real fleet does to it (SPEC §10).

Skewed wall clocks (libfaketime on one Spookd; its monotonic clock untouched), an
API server restart, a holder cut off from the API server for a moment, a watch
ended by 410 Gone. Real device managers (node harness), one real kube-apiserver;
the only holder must stay the only holder throughout.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import faketime
from support.apiserver import ApiServer
from support.tcpproxy import TcpProxy
from test_exclusive import OSC, TIMINGS, Cluster, Node, config, eventually, serving, shows

pytestmark = [pytest.mark.apiserver, pytest.mark.harness]

#: The Lease duration of TIMINGS: every figure below is a multiple of it.
DURATION = float(TIMINGS["SPOOKD_LEASE_DURATION"])
#: The cut tests use the default Lease duration (15 s): the 0.2 of it left for retries
#: after the cut (3 s) is what a node gets in production, on a machine as loaded as CI.
CUT_DURATION = 15.0
CUT_TIMINGS = {**TIMINGS, "SPOOKD_LEASE_DURATION": "15"}
#: A Lease whose retry window (the 0.3 of it after a renewal falls due: 9 s) outlasts an
#: API server restart (4-8 s here) whenever in the renewal cycle the restart comes.
LONG = {**TIMINGS, "SPOOKD_LEASE_DURATION": "30"}


@pytest.fixture
def make_cluster(apiserver: ApiServer) -> Iterator[Callable[[dict[str, str]], Cluster]]:
    made: list[Cluster] = []

    def make(timings: dict[str, str]) -> Cluster:
        made.append(Cluster(apiserver, timings))
        return made[-1]

    try:
        yield make
    finally:
        for cluster in made:
            cluster.close()


def hold(cluster: Cluster, holder: Node, others: list[Node]) -> None:
    """The holder's pod gets device 0001; every other node then reports it Unhealthy."""
    for node in (holder, *others):
        node.harness.wait_for(serving(1), timeout=20)
        eventually(shows(node, "0001", "Healthy"), what=f"{node.name} healthy")
    admitted = holder.harness.admit("pod-held", {"app": {OSC: 1}}).raise_for_error()
    assert admitted.container("app").devices[OSC] == ["0001"]
    assert cluster.holder("0001") == holder.name
    for node in others:
        eventually(shows(node, "0001", "Unhealthy"), timeout=3, what=f"{node.name} sees the claim")


def stays_held(
    cluster: Cluster, holder: Node, other: Node, seconds: float, *, admit_every: float = 1.0
) -> int:
    """For ``seconds``: the holder keeps the Lease, the other node shows Unhealthy and is refused."""
    deadline = time.monotonic() + seconds
    next_admit = time.monotonic()
    refused = 0
    while time.monotonic() < deadline:
        assert cluster.holder("0001") == holder.name, (
            f"{holder.name} lost the Lease{_claim_log(holder, other)}"
        )
        assert other.health().get("0001") == "Unhealthy", (
            f"{other.name} offers a device held elsewhere at {time.monotonic():.2f}{_claim_log(holder, other)}"
        )
        if time.monotonic() >= next_admit:
            result = other.harness.admit(f"pod-{other.name}-{refused}", {"app": {OSC: 1}})
            assert not result.ok, f"{other.name} was given the device {holder.name} holds"
            refused += 1
            next_admit = time.monotonic() + admit_every
        time.sleep(0.05)
    return refused


def _claim_log(*nodes: Node) -> str:
    """The nodes' last log lines, for a failure's message."""
    return "".join(
        f"\n  {node.name}: {line[:300]}"
        for node in nodes
        for line in node.spookd.log_text().splitlines()[-25:]
    )


@pytest.mark.parametrize(
    ("skewed", "offset"),
    [("other", int(2 * DURATION)), ("other", -int(2 * DURATION)), ("holder", -int(2 * DURATION))],
    ids=["other-ahead", "other-behind", "holder-behind"],
)
def test_a_skewed_wall_clock_never_makes_a_second_holder(
    make_cluster: Callable[[dict[str, str]], Cluster], skewed: str, offset: int
) -> None:
    wall, monotonic = faketime.offset_seen(offset)
    assert abs(wall - offset) < 1.0, f"libfaketime offset the wall clock by {wall:.2f}s, not {offset}s"
    assert abs(monotonic) < 1.0, f"libfaketime moved the monotonic clock by {monotonic:.2f}s"
    cluster = make_cluster(TIMINGS)
    skew = faketime.environment(offset)
    text = config(["node-a", "node-b"], ["0001"])
    a = cluster.add("node-a", text, env=skew if skewed == "holder" else None)
    b = cluster.add("node-b", text, env=skew if skewed == "other" else None)
    hold(cluster, a, [b])
    refused = stays_held(cluster, a, b, 4 * DURATION)
    assert refused >= 10
    assert "lost the claim" not in a.spookd.log_text()


def test_an_api_server_restart_keeps_the_holder_and_gives_the_device_to_nobody_else(
    apiserver: ApiServer, make_cluster: Callable[[dict[str, str]], Cluster]
) -> None:
    cluster = make_cluster(LONG)
    text = config(["node-a", "node-b"], ["0001"])
    a, b = cluster.add("node-a", text), cluster.add("node-b", text)
    hold(cluster, a, [b])
    before = cluster.lease("0001")
    assert before is not None
    restart = threading.Thread(target=apiserver.restart)
    restart.start()
    health: set[str | None] = set()
    while restart.is_alive():
        health.add(b.health().get("0001"))
        time.sleep(0.05)
    restart.join()
    assert health == {"Unhealthy"}, f"node-b showed {health} during the restart"
    # A whole Lease duration after the restart: the holder renewed, nobody took over.
    stays_held(cluster, a, b, float(LONG["SPOOKD_LEASE_DURATION"]) + 2)
    after = cluster.lease("0001")
    assert after is not None
    assert after["metadata"]["uid"] == before["metadata"]["uid"], "the Lease was deleted and made again"
    assert after["spec"]["renewTime"] != before["spec"]["renewTime"], "the holder never renewed"
    assert "lost the claim" not in a.spookd.log_text()


def _proxied_kubeconfig(apiserver: ApiServer, proxy: TcpProxy, path: Path) -> Path:
    apiserver.write_kubeconfig(path, apiserver.token)
    document = json.loads(path.read_text())
    document["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    path.write_text(json.dumps(document))
    return path


def _next_renewal_seen(cluster: Cluster, timeout: float) -> float:
    """Wait for the holder's next renewal of 0001 to show in the API; the monotonic time it did."""
    before = cluster.lease("0001")
    assert before is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lease = cluster.lease("0001")
        if lease is not None and lease["spec"]["renewTime"] != before["spec"]["renewTime"]:
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"no renewal of the Lease in {timeout:g} s")


@pytest.mark.parametrize("how", ["cut", "mute"], ids=["cut-off", "answers-lost"])
def test_a_holder_cut_off_as_its_renewal_falls_due_keeps_its_claim(
    apiserver: ApiServer, make_cluster: Callable[[dict[str, str]], Cluster], tmp_path: Path, how: str
) -> None:
    """The worst moment for a cut: just before a renewal is due, so only retries can save it.

    Renewals are sent 0.7 of the duration after the last success and retried until the
    duration has passed: a cut from 0.6 to 0.8 of the duration after a renewal makes the
    due one fail for certain and leaves 0.2 of it (3 s of 15 s: two tries or more, each
    a TLS reconnect) for a retry. ``cut``: every connection reset, none accepted.
    ``mute``: the requests still arrive and are applied, only the answers are lost, so
    the holder's next try, made from the resourceVersion it last heard of, conflicts
    with its own applied renewal (HTTP 409); that is no reason to give the claim up.
    """
    address = urllib.parse.urlsplit(apiserver.server)
    assert address.hostname is not None
    assert address.port is not None
    with TcpProxy((address.hostname, address.port)) as proxy:
        cluster = make_cluster(CUT_TIMINGS)
        text = config(["node-a", "node-b"], ["0001"])
        a = cluster.add(
            "node-a", text, kubeconfig=_proxied_kubeconfig(apiserver, proxy, tmp_path / "a.kubeconfig")
        )
        b = cluster.add("node-b", text)
        hold(cluster, a, [b])
        renewed = _next_renewal_seen(cluster, timeout=CUT_DURATION)
        time.sleep(max(0.0, renewed + 0.6 * CUT_DURATION - time.monotonic()))
        if how == "cut":
            proxy.cut()
        else:
            proxy.mute()
        health: set[str | None] = set()
        cut_until = renewed + 0.8 * CUT_DURATION
        while time.monotonic() < cut_until:
            health.add(b.health().get("0001"))
            time.sleep(0.05)
        proxy.restore()
        assert health == {"Unhealthy"}, f"node-b showed {health} while node-a was cut off"
        stays_held(cluster, a, b, 2 * CUT_DURATION)
        log = a.spookd.log_text()
        assert "cannot renew device claims" in log, "the cut never reached a renewal"
        if how == "mute":
            assert "applied unanswered" in log, "no renewal was applied unanswered"
        assert "lost the claim" not in log


def test_a_watch_ended_by_410_lists_again_and_the_holder_stays_the_only_one(
    apiserver: ApiServer, make_cluster: Callable[[dict[str, str]], Cluster]
) -> None:
    cluster = make_cluster(LONG)
    text = config(["node-a", "node-b"], ["0001"])
    a, b = cluster.add("node-a", text), cluster.add("node-b", text)
    hold(cluster, a, [b])
    # Any write moves the revision past the one node-b's watch resumes from; compaction
    # then makes that one too old, and a fresh watch cache answers 410 Gone.
    cluster.api.ensure(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"bump-{time.monotonic_ns()}", "namespace": cluster.namespace},
        }
    )
    apiserver.compact()
    restart = threading.Thread(target=apiserver.restart)
    restart.start()
    health: set[str | None] = set()
    while restart.is_alive():
        health.add(b.health().get("0001"))
        time.sleep(0.05)
    restart.join()
    assert health == {"Unhealthy"}, f"node-b showed {health} during the restart"

    def relisted() -> bool:
        return any(
            r["message"].startswith("watch expired (410 Gone)") and r.get("what") == "Leases"
            for r in b.spookd.records()
        )

    eventually(relisted, timeout=30, what="node-b's Lease watch relisting after 410")
    stays_held(cluster, a, b, float(LONG["SPOOKD_LEASE_DURATION"]) + 2)
    assert "lost the claim" not in a.spookd.log_text()
