"""The registration state machine (SPEC §5), without sockets: state + event → actions."""

from __future__ import annotations

from spookd.backoff import Backoff
from spookd.deviceplugin import registration as reg
from spookd.deviceplugin.registration import (
    STREAM_GRACE,
    Bind,
    BindFailed,
    Bound,
    Close,
    FilesSeen,
    Phase,
    Register,
    Registered,
    RegisterFailed,
    Registration,
    ReportFailing,
    StreamChanged,
    TimerFired,
    Wait,
)

SOCKET = "spookd-examplecom_widget.sock"


def machine(**kwargs: object) -> Registration:
    """A machine whose backoff has no jitter, so delays are exact."""
    return Registration(
        SOCKET,
        "/var/lib/kubelet/device-plugins",
        register_backoff=Backoff(reg.BACKOFF_FIRST, reg.BACKOFF_MAX, uniform=lambda a, b: 1.0),
        **kwargs,  # type: ignore[arg-type]
    )


def registered(m: Registration) -> Registration:
    assert m.start() == [Bind(SOCKET)]
    assert m.handle(Bound("sock-1")) == [Register()]
    assert m.handle(Registered("kubelet-1")) == []
    assert m.registered
    return m


def test_binds_first_then_registers_then_rests() -> None:
    m = registered(machine())
    assert m.phase is Phase.REGISTERED
    assert not m.waiting
    assert m.handle(FilesSeen("sock-1", "kubelet-1")) == []


def test_failed_registration_retries_with_doubling_capped_backoff() -> None:
    m = machine()
    m.start()
    m.handle(Bound("sock-1"))
    delays = []
    for attempt in range(1, 10):
        actions = m.handle(RegisterFailed("kubelet.sock does not exist", now=float(attempt)))
        assert m.phase is Phase.REGISTER_WAIT
        assert m.attempt == attempt
        (wait,) = actions
        assert isinstance(wait, Wait)
        delays.append(wait.delay)
        assert m.handle(TimerFired()) == [Register()]
    assert delays[:4] == [0.05, 0.1, 0.2, 0.4]
    assert max(delays) == reg.BACKOFF_MAX
    m.handle(Registered("kubelet-1"))
    assert m.attempt == 0
    m.handle(FilesSeen("sock-1", "kubelet-2"))
    (wait,) = m.handle(RegisterFailed("refused", now=100.0))
    assert wait == Wait(0.05), "a success starts the backoff again"


def test_kubelet_socket_appearing_retries_registration_at_once() -> None:
    m = machine()
    m.start()
    m.handle(Bound("sock-1"))
    m.handle(RegisterFailed("kubelet.sock does not exist", now=0.0))
    assert m.handle(FilesSeen("sock-1", None)) == [], "no kubelet.sock yet: keep waiting"
    assert m.handle(FilesSeen("sock-1", "kubelet-1")) == [Register()]
    assert not m.waiting


def test_registration_failing_for_long_is_reported_once() -> None:
    m = machine(report_after=60.0)
    m.start()
    m.handle(Bound("sock-1"))
    seen = []
    for now in (0.0, 30.0, 61.0, 90.0, 200.0):
        seen += [a for a in m.handle(RegisterFailed("refused", now=now)) if isinstance(a, ReportFailing)]
        m.handle(TimerFired())
    assert seen == [ReportFailing("refused", 61.0)]


def test_a_replaced_socket_is_bound_again() -> None:
    m = registered(machine())
    actions = m.handle(FilesSeen("sock-2", "kubelet-1"))
    assert actions == [Close(), Bind(SOCKET, "socket deleted or replaced")]
    assert not m.registered
    assert m.handle(Bound("sock-3")) == [Register()]
    assert m.epoch == 2


def test_a_deleted_socket_is_bound_again_even_while_waiting_to_register() -> None:
    m = machine()
    m.start()
    m.handle(Bound("sock-1"))
    m.handle(RegisterFailed("refused", now=0.0))
    assert m.handle(FilesSeen(None, "kubelet-1")) == [Close(), Bind(SOCKET, "socket deleted or replaced")]
    assert not m.waiting, "the old wait is dropped"


def test_a_new_kubelet_socket_means_register_again() -> None:
    m = registered(machine())
    assert m.handle(FilesSeen("sock-1", "kubelet-2")) == [Register("kubelet.sock recreated")]
    m.handle(Registered("kubelet-2"))
    assert m.handle(FilesSeen("sock-1", "kubelet-2")) == []


def test_already_connected_moves_to_the_next_generations_socket() -> None:
    m = registered(machine())
    m.handle(FilesSeen("sock-1", "kubelet-2"))
    actions = m.handle(RegisterFailed("already connected", now=0.0, already_connected=True))
    assert actions == [
        Close(),
        Bind(
            "spookd-examplecom_widget.g2.sock",
            f"kubelet still holds {SOCKET}; moving to spookd-examplecom_widget.g2.sock",
        ),
    ]
    assert m.generation == 2
    assert m.socket_name == "spookd-examplecom_widget.g2.sock"


def test_a_server_added_back_starts_on_its_generations_name() -> None:
    m = machine(generation=3)
    assert m.start() == [Bind("spookd-examplecom_widget.g3.sock")]


def test_a_lost_stream_without_successor_registers_again_after_the_grace() -> None:
    m = registered(machine())
    m.handle(StreamChanged(1, opened=True))
    assert m.handle(StreamChanged(1, opened=False)) == [Wait(STREAM_GRACE)]
    assert m.phase is Phase.STREAM_GRACE
    assert m.registered
    assert m.handle(TimerFired()) == [Register("ListAndWatch stream ended without a new one")]


def test_a_successor_stream_within_the_grace_keeps_the_registration() -> None:
    m = registered(machine())
    m.handle(StreamChanged(1, opened=True))
    m.handle(StreamChanged(1, opened=False))
    assert m.handle(StreamChanged(1, opened=True)) == []
    assert m.phase is Phase.REGISTERED
    assert not m.waiting


def test_one_of_two_streams_ending_changes_nothing() -> None:
    m = registered(machine())
    m.handle(StreamChanged(1, opened=True))
    m.handle(StreamChanged(1, opened=True))
    assert m.handle(StreamChanged(1, opened=False)) == []
    assert m.phase is Phase.REGISTERED


def test_streams_of_a_closed_server_do_not_count() -> None:
    m = registered(machine())
    m.handle(StreamChanged(1, opened=True))
    m.handle(FilesSeen(None, "kubelet-1"))  # rebind
    m.handle(Bound("sock-2"))
    m.handle(Registered("kubelet-1"))
    assert m.handle(StreamChanged(1, opened=False)) == [], "the old server's stream ending is no loss"
    assert m.phase is Phase.REGISTERED


def test_a_stream_lost_while_registering_gets_the_grace_afterwards() -> None:
    m = registered(machine())
    m.handle(StreamChanged(1, opened=True))
    m.handle(FilesSeen("sock-1", "kubelet-2"))  # re-register
    assert m.handle(StreamChanged(1, opened=False)) == []
    assert m.handle(Registered("kubelet-2")) == [Wait(STREAM_GRACE)]
    assert m.handle(TimerFired()) == [Register("ListAndWatch stream ended without a new one")]


def test_a_failed_bind_is_tried_again_with_backoff() -> None:
    m = machine()
    m.start()
    first = m.handle(BindFailed())
    second_wait = (m.handle(TimerFired()), m.handle(BindFailed()))
    assert first == [Wait(0.05)]
    assert second_wait == ([Bind(SOCKET)], [Wait(0.1)])
    assert m.handle(FilesSeen(None, "kubelet-1")) == [], "nothing is bound: no file to compare"
    m.handle(TimerFired())
    m.handle(Bound("sock-1"))
    assert m.handle(BindFailed()) == [Wait(0.05)], "a bind that worked starts the backoff again"
