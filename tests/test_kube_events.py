"""The Event reporter: reports queued, sent in order by one task, bounded, never fatal (SPEC §3, §7)."""

from __future__ import annotations

import uuid

import anyio
import pytest
from kubernetes_asyncio import client
from support.apiserver import ApiServer

from spookd.config import ConfigError, load_config
from spookd.config.versions import Accepted, Deleted, ObjectRef, Rejected
from spookd.kube.client import connect
from spookd.kube.events import QUEUE_LIMIT, KubeEvents

pytestmark = pytest.mark.anyio

CONFIG = 'deviceMapping:\n  - {hosts: [n], devices: [{resourceName: e.com/w, instanceID: "1"}]}\n'


def rejected(ref: ObjectRef, n: int) -> Rejected:
    return Rejected(errors=[ConfigError("cm", 1, 1, "", f"report {n}")], source="cm", ref=ref)


async def test_reports_reach_the_api_server_in_the_order_they_were_made(apiserver: ApiServer) -> None:
    namespace = f"ev-{uuid.uuid4().hex[:8]}"
    admin = apiserver.client()
    admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    ref = ObjectRef(namespace, "spookd-config")
    api = await connect(str(apiserver.kubeconfig))
    reporter = KubeEvents(api, "node-a", ref)
    async with api, anyio.create_task_group() as tg:
        await tg.start(reporter.run)
        for n in range(12):
            reporter.rejected(rejected(ref, n))
        reporter.applied(Accepted(load_config(CONFIG, "cm"), "cm", ref), {"added": ["e.com/w"]})
        with anyio.fail_after(20):
            while True:
                listing = admin.request("GET", f"/api/v1/namespaces/{namespace}/events").json["items"]
                if len(listing) == 13:
                    break
                await anyio.sleep(0.1)
        tg.cancel_scope.cancel()
    listing.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))
    reasons = [e["reason"] for e in listing]
    assert reasons == ["ConfigRejected"] * 12 + ["ConfigApplied"]
    numbers = [int(e["message"].rsplit("report ", 1)[1]) for e in listing[:12]]
    assert numbers == list(range(12))


async def test_an_unreachable_api_server_costs_a_bounded_queue_and_ends_nothing() -> None:
    configuration = client.Configuration(host="https://127.0.0.1:9")  # nothing listens on port 9
    api = client.ApiClient(configuration)
    ref = ObjectRef("ns", "cm")
    reporter = KubeEvents(api, "node-a", ref)
    for n in range(QUEUE_LIMIT + 50):
        reporter.rejected(rejected(ref, n))
    assert reporter.dropped == 50
    async with api, anyio.create_task_group() as tg:
        await tg.start(reporter.run)
        with anyio.fail_after(30):
            while reporter.pending:
                await anyio.sleep(0.05)
        reporter.deleted(Deleted(source="cm", ref=ref))  # still taking reports
        await anyio.sleep(0.2)
        tg.cancel_scope.cancel()
