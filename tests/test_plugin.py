"""Plugin servers over real Unix sockets, against the Python kubelet double (SPEC §4, §5).

The real device manager proves conformance in test_conformance.py; these tests keep
the protocol details fast to check.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import grpclib
import pytest
import walkthrough
from anyio.streams.memory import MemoryObjectSendStream
from kubelet_double import running_kubelet

from spookd._proto import v1beta1 as api
from spookd.app import AppState, run
from spookd.config import load_config
from spookd.config.versions import Accepted, Deleted, Rejected, SourceEvent

pytestmark = pytest.mark.anyio

WALKTHROUGH = """
deviceMapping:
  - hosts: [minikube]
    devices:
      - {resourceName: example.com/widget, instanceID: "0001", env: {IP: 192.168.0.200, PORT: 12345}}
      - {resourceName: example.com/thingamajig, instanceID: A1234}
"""


def accepted(text: str) -> Accepted:
    return Accepted(config=load_config(text, "test.yaml"), source="test.yaml")


class Daemon:
    """Spookd's app running in the test's event loop, fed through a memory stream."""

    def __init__(self, send: MemoryObjectSendStream[SourceEvent], state: AppState) -> None:
        self.send = send
        self.state = state

    async def push(self, event: SourceEvent) -> None:
        await self.send.send(event)


@contextlib.asynccontextmanager
async def daemon(plugin_dir: Path, node: str = "minikube") -> AsyncIterator[Daemon]:
    send, receive = anyio.create_memory_object_stream[SourceEvent](10)

    async def source() -> AsyncIterator[SourceEvent]:
        async with receive:
            async for event in receive:
                yield event

    state = AppState(node_name=node)
    async with send, anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(run, source(), node, plugin_dir, state=state))
        try:
            yield Daemon(send, state)
        finally:
            tg.cancel_scope.cancel()


async def test_registers_every_resource_and_reports_its_devices(plugin_dir: Path) -> None:
    async with running_kubelet(plugin_dir) as kubelet, daemon(plugin_dir) as spookd:
        await spookd.push(accepted(WALKTHROUGH))
        await kubelet.wait_for(
            lambda: kubelet.capacity() == {"example.com/widget": 1, "example.com/thingamajig": 1}
        )
        registrations = {r.resource_name: r for r in kubelet.registrations}
        widget = registrations["example.com/widget"]
        assert widget.version == "v1beta1"
        assert widget.endpoint == "spookd-examplecom_widget.sock"
        assert widget.options is not None
        assert widget.options.get_preferred_allocation_available
        assert not widget.options.pre_start_required
        assert kubelet.plugins["example.com/widget"].devices == {"0001": "Healthy"}
        assert (plugin_dir / "spookd-examplecom_widget.sock").is_socket()
        await kubelet.wait_for(lambda: spookd.state.ready()[0])


async def test_allocate_injects_the_walkthrough_environment(plugin_dir: Path) -> None:
    async with running_kubelet(plugin_dir) as kubelet, daemon(plugin_dir) as spookd:
        await spookd.push(accepted(WALKTHROUGH))
        await kubelet.wait_for(lambda: len(kubelet.capacity()) == 2)
        widget = await kubelet.allocate("example.com/widget", ["0001"])
        thing = await kubelet.allocate("example.com/thingamajig", ["A1234"])
        env = {**widget.container_responses[0].envs, **thing.container_responses[0].envs}
        assert env == walkthrough.ENV


async def test_allocate_answers_one_response_per_container(plugin_dir: Path) -> None:
    config = WALKTHROUGH.replace(
        "{resourceName: example.com/thingamajig, instanceID: A1234}",
        '{resourceName: example.com/widget, instanceID: "0002", env: {IP: b, PORT: 2}}',
    )
    async with running_kubelet(plugin_dir) as kubelet, daemon(plugin_dir) as spookd:
        await spookd.push(accepted(config))
        await kubelet.wait_for(lambda: kubelet.capacity() == {"example.com/widget": 2})
        response = await kubelet.allocate("example.com/widget", ["0002"], ["0002", "0001"])
        first, second = response.container_responses
        assert first.envs["EXAMPLECOM_WIDGET_ID"] == "0002"
        assert first.envs["EXAMPLECOM_WIDGET_NUM_DEVICES"] == "1"
        assert second.envs["EXAMPLECOM_WIDGET_DEV0_ID"] == "0001"
        assert second.envs["EXAMPLECOM_WIDGET_DEV1_ID"] == "0002"
        assert second.envs["EXAMPLECOM_WIDGET_NUM_DEVICES"] == "2"


@pytest.mark.parametrize(
    ("ids", "message"),
    [(["9999"], "unknown device ID '9999'"), (["0001", "0001"], "'0001' is requested twice")],
)
async def test_allocate_refuses_unknown_and_repeated_ids(
    plugin_dir: Path, ids: list[str], message: str
) -> None:
    async with running_kubelet(plugin_dir) as kubelet, daemon(plugin_dir) as spookd:
        await spookd.push(accepted(WALKTHROUGH))
        await kubelet.wait_for(lambda: len(kubelet.capacity()) == 2)
        with pytest.raises(grpclib.GRPCError) as info:
            await kubelet.allocate("example.com/widget", ids)
        assert info.value.status is grpclib.const.Status.INVALID_ARGUMENT
        assert info.value.message is not None
        assert message in info.value.message


async def test_a_huge_bogus_id_gets_a_short_error_the_client_can_read(plugin_dir: Path) -> None:
    bogus = "x" * 100_000
    async with running_kubelet(plugin_dir) as kubelet, daemon(plugin_dir) as spookd:
        await spookd.push(accepted(WALKTHROUGH))
        await kubelet.wait_for(lambda: len(kubelet.capacity()) == 2)
        with pytest.raises(grpclib.GRPCError) as info:
            await kubelet.allocate("example.com/widget", [bogus])
        assert info.value.status is grpclib.const.Status.INVALID_ARGUMENT
        assert info.value.message is not None
        assert "unknown device ID 'xxxxxxxx" in info.value.message
        assert "(100000 characters)" in info.value.message
        assert len(info.value.message) < 300


async def test_preferred_allocation_and_prestart_answer(plugin_dir: Path) -> None:
    config = "deviceMapping:\n  - hosts: [minikube]\n    devices:\n" + "".join(
        f'      - {{resourceName: example.com/widget, instanceID: "{i}"}}\n' for i in range(1, 6)
    )
    async with running_kubelet(plugin_dir) as kubelet, daemon(plugin_dir) as spookd:
        await spookd.push(accepted(config))
        await kubelet.wait_for(lambda: kubelet.capacity() == {"example.com/widget": 5})
        async with kubelet.plugin("example.com/widget") as stub:
            answer = await stub.get_preferred_allocation(
                api.PreferredAllocationRequest(
                    container_requests=[
                        api.ContainerPreferredAllocationRequest(
                            available_deviceIDs=["5", "3", "4", "2"],
                            must_include_deviceIDs=["4"],
                            allocation_size=3,
                        )
                    ]
                )
            )
            assert answer.container_responses[0].device_i_ds == ["4", "2", "3"]
            prestart = await stub.pre_start_container(api.PreStartContainerRequest(devices_ids=["1"]))
            assert prestart == api.PreStartContainerResponse()


async def test_config_changes_push_snapshots_without_reregistering(plugin_dir: Path) -> None:
    async with running_kubelet(plugin_dir) as kubelet, daemon(plugin_dir) as spookd:
        await spookd.push(accepted(WALKTHROUGH))
        await kubelet.wait_for(lambda: len(kubelet.capacity()) == 2)
        registered = len(kubelet.registrations)
        more = WALKTHROUGH + '      - {resourceName: example.com/widget, instanceID: "0002"}\n'
        await spookd.push(accepted(more))
        await kubelet.wait_for(lambda: kubelet.capacity()["example.com/widget"] == 2)
        assert sorted(kubelet.plugins["example.com/widget"].devices) == ["0001", "0002"]
        # changed env only: a snapshot is pushed, nothing is re-registered
        snapshots = kubelet.plugins["example.com/widget"].snapshots
        await spookd.push(accepted(more.replace("192.168.0.200", "192.168.0.201")))
        await kubelet.wait_for(lambda: kubelet.plugins["example.com/widget"].snapshots > snapshots)
        widget = await kubelet.allocate("example.com/widget", ["0001"])
        assert widget.container_responses[0].envs["EXAMPLECOM_WIDGET_IP"] == "192.168.0.201"
        assert len(kubelet.registrations) == registered


async def test_a_repeated_allocate_follows_config_changes(plugin_dir: Path) -> None:
    # Answers are kept per requested ID set: a changed env or a removed device must show at once.
    more = WALKTHROUGH + '      - {resourceName: example.com/widget, instanceID: "0002"}\n'
    async with running_kubelet(plugin_dir) as kubelet, daemon(plugin_dir) as spookd:
        await spookd.push(accepted(more))
        await kubelet.wait_for(lambda: kubelet.capacity().get("example.com/widget") == 2)
        for _ in range(2):
            widget = await kubelet.allocate("example.com/widget", ["0001"], ["0002", "0001"])
            assert widget.container_responses[0].envs["EXAMPLECOM_WIDGET_IP"] == "192.168.0.200"
        snapshots = kubelet.plugins["example.com/widget"].snapshots
        await spookd.push(accepted(more.replace("192.168.0.200", "192.168.0.201")))
        await kubelet.wait_for(lambda: kubelet.plugins["example.com/widget"].snapshots > snapshots)
        widget = await kubelet.allocate("example.com/widget", ["0001"], ["0002", "0001"])
        assert widget.container_responses[0].envs["EXAMPLECOM_WIDGET_IP"] == "192.168.0.201"
        assert widget.container_responses[1].envs["EXAMPLECOM_WIDGET_DEV0_IP"] == "192.168.0.201"
        await spookd.push(accepted(WALKTHROUGH))
        await kubelet.wait_for(lambda: kubelet.capacity().get("example.com/widget") == 1)
        with pytest.raises(grpclib.GRPCError) as info:
            await kubelet.allocate("example.com/widget", ["0001"], ["0002", "0001"])
        assert info.value.status is grpclib.const.Status.INVALID_ARGUMENT
        assert info.value.message is not None
        assert "'0002'" in info.value.message


async def test_removed_resource_is_withdrawn_and_its_socket_removed(plugin_dir: Path) -> None:
    async with running_kubelet(plugin_dir) as kubelet, daemon(plugin_dir) as spookd:
        await spookd.push(accepted(WALKTHROUGH))
        await kubelet.wait_for(lambda: len(kubelet.capacity()) == 2)
        view = kubelet.plugins["example.com/thingamajig"]
        only_widget = WALKTHROUGH.replace(
            "      - {resourceName: example.com/thingamajig, instanceID: A1234}\n", ""
        )
        await spookd.push(accepted(only_widget))
        gone = plugin_dir / "spookd-examplecom_thingamajig.sock"
        await kubelet.wait_for(lambda: not view.streaming and not gone.exists())
        assert view.devices == {}, "the last snapshot must withdraw every device"
        assert (plugin_dir / "spookd-examplecom_widget.sock").is_socket()


async def test_rejected_config_keeps_the_last_good_one(plugin_dir: Path) -> None:
    async with running_kubelet(plugin_dir) as kubelet, daemon(plugin_dir) as spookd:
        await spookd.push(accepted(WALKTHROUGH))
        await kubelet.wait_for(lambda: len(kubelet.capacity()) == 2)
        await spookd.push(Rejected(errors=[], source="test.yaml"))
        await spookd.push(accepted(WALKTHROUGH.replace("A1234", "B1")))
        await kubelet.wait_for(
            lambda: kubelet.plugins["example.com/thingamajig"].devices == {"B1": "Healthy"}
        )


async def test_deleted_config_withdraws_everything(plugin_dir: Path) -> None:
    async with running_kubelet(plugin_dir) as kubelet, daemon(plugin_dir) as spookd:
        await spookd.push(accepted(WALKTHROUGH))
        await kubelet.wait_for(lambda: len(kubelet.capacity()) == 2)
        await spookd.push(Deleted(source="test.yaml"))
        await kubelet.wait_for(
            lambda: (
                kubelet.capacity() == {} and sorted(p.name for p in plugin_dir.iterdir()) == ["kubelet.sock"]
            )
        )
        assert not spookd.state.ready()[0]


async def test_kubelet_restart_is_noticed_and_everything_reregisters(plugin_dir: Path) -> None:
    async with running_kubelet(plugin_dir) as kubelet, daemon(plugin_dir) as spookd:
        await spookd.push(accepted(WALKTHROUGH))
        await kubelet.wait_for(lambda: len(kubelet.capacity()) == 2)
        for _ in range(3):
            await kubelet.restart()
            assert kubelet.capacity() == {}
            took = await kubelet.wait_for(lambda: len(kubelet.capacity()) == 2, timeout=3)
            assert took < 1.0, f"re-registration took {took:.2f}s"
            assert (plugin_dir / "spookd-examplecom_widget.sock").is_socket()


async def test_deleted_socket_is_recreated_and_reregistered(plugin_dir: Path) -> None:
    async with running_kubelet(plugin_dir) as kubelet, daemon(plugin_dir) as spookd:
        await spookd.push(accepted(WALKTHROUGH))
        await kubelet.wait_for(lambda: len(kubelet.capacity()) == 2)
        registered = len(kubelet.registrations)
        (plugin_dir / "spookd-examplecom_widget.sock").unlink()
        await kubelet.wait_for(lambda: len(kubelet.registrations) > registered, timeout=2)
        await kubelet.wait_for((plugin_dir / "spookd-examplecom_widget.sock").is_socket)
        await kubelet.wait_for(lambda: kubelet.plugins["example.com/widget"].streaming)


async def test_lost_stream_triggers_reregistration(plugin_dir: Path) -> None:
    async with running_kubelet(plugin_dir) as kubelet, daemon(plugin_dir) as spookd:
        await spookd.push(accepted(WALKTHROUGH))
        await kubelet.wait_for(lambda: len(kubelet.capacity()) == 2)
        registered = [r.resource_name for r in kubelet.registrations]
        kubelet.drop_stream("example.com/widget")
        await kubelet.wait_for(
            lambda: (
                [r.resource_name for r in kubelet.registrations][len(registered) :] == ["example.com/widget"]
            ),
            timeout=3,
        )
        await kubelet.wait_for(lambda: kubelet.plugins["example.com/widget"].streaming)


async def test_registration_retries_until_the_kubelet_appears(plugin_dir: Path) -> None:
    async with daemon(plugin_dir) as spookd:
        await spookd.push(accepted(WALKTHROUGH))
        await anyio.sleep(0.5)
        assert not spookd.state.ready()[0]
        async with running_kubelet(plugin_dir) as kubelet:
            took = await kubelet.wait_for(lambda: len(kubelet.capacity()) == 2, timeout=3)
            assert took < 1.0
            await kubelet.wait_for(lambda: spookd.state.ready()[0])


async def test_several_streams_each_get_every_snapshot(plugin_dir: Path) -> None:
    async with running_kubelet(plugin_dir) as kubelet, daemon(plugin_dir) as spookd:
        await spookd.push(accepted(WALKTHROUGH))
        await kubelet.wait_for(lambda: len(kubelet.capacity()) == 2)
        seen: list[list[list[str]]] = [[], []]

        async def watch(index: int, stub: api.DevicePluginStub) -> None:
            async for response in stub.list_and_watch(api.Empty()):
                seen[index].append([d.id for d in response.devices])

        async with (
            kubelet.plugin("example.com/widget") as one,
            kubelet.plugin("example.com/widget") as two,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(watch, 0, one)
            tg.start_soon(watch, 1, two)
            await kubelet.wait_for(lambda: all(seen))
            more = WALKTHROUGH + '      - {resourceName: example.com/widget, instanceID: "0000"}\n'
            await spookd.push(accepted(more))
            await kubelet.wait_for(lambda: all(len(s) == 2 for s in seen))
            tg.cancel_scope.cancel()
        assert seen[0] == seen[1] == [["0001"], ["0000", "0001"]]


async def test_streams_end_cleanly_when_servers_stop(plugin_dir: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        async with running_kubelet(plugin_dir) as kubelet:
            async with daemon(plugin_dir) as spookd:
                await spookd.push(accepted(WALKTHROUGH))
                await kubelet.wait_for(lambda: len(kubelet.capacity()) == 2)
            await kubelet.wait_for(lambda: not any(v.streaming for v in kubelet.plugins.values()))
        gc.collect()
    assert not await anyio.Path(plugin_dir / "spookd-examplecom_widget.sock").exists()
    assert sorted(p.name for p in plugin_dir.iterdir()) == []  # noqa: ASYNC240 - a test's own tmp dir


async def test_stale_and_foreign_files_in_the_socket_place_are_replaced(plugin_dir: Path) -> None:
    (plugin_dir / "spookd-examplecom_widget.sock").write_text("not a socket")
    async with running_kubelet(plugin_dir) as kubelet, daemon(plugin_dir) as spookd:
        await spookd.push(accepted(WALKTHROUGH))
        await kubelet.wait_for(lambda: len(kubelet.capacity()) == 2)
        assert (plugin_dir / "spookd-examplecom_widget.sock").is_socket()


async def test_a_directory_change_seen_before_binding_does_not_rebind(plugin_dir: Path) -> None:
    # The watch tells every server about every change of the directory; a server that
    # had not bound yet must judge the files as they are when it looks, not as they
    # were when the change happened (two servers starting together rebound each other).
    from spookd.config.model import Device
    from spookd.deviceplugin.server import ResourceServer

    server = ResourceServer("example.com/widget", [Device("example.com/widget", "1")], plugin_dir, "w.sock")
    server.check_files()  # before the socket exists
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        await anyio.sleep(0.3)  # no kubelet.sock: registration fails and waits
        assert server.registration.epoch == 1, "the server rebound on a stale look at the directory"
        assert (plugin_dir / "w.sock").is_socket()
        tg.cancel_scope.cancel()
