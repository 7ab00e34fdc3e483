"""Registration with the kubelet as a pure state machine: state + event → actions (SPEC §5).

No I/O and no clock: the shell (spookd.deviceplugin.server) binds, registers,
reads the files and the time, feeds what happened in as events, and carries out
the actions this machine answers with. Everything about *when* to bind, register,
re-register, rebind and move to a new socket name is decided here, and is tested
without sockets (tests/test_registration.py).

    UNBOUND ──Bind──▶ (Bound) REGISTERING ──Registered──▶ REGISTERED ⇄ STREAM_GRACE
       ▲  BindFailed: BIND_WAIT      │ RegisterFailed: REGISTER_WAIT
       └── socket replaced / "already connected" (next generation's name) ──┘
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass, field

from spookd.backoff import Backoff
from spookd.naming import generation_socket_name

BACKOFF_FIRST = 0.05
BACKOFF_MAX = 5.0
#: How long a lost ListAndWatch stream may stay without a successor.
STREAM_GRACE = 0.5


class Phase(enum.Enum):
    """Where one resource's server stands with the kubelet."""

    UNBOUND = "unbound"
    BIND_WAIT = "waiting to bind again"
    REGISTERING = "registering"
    REGISTER_WAIT = "waiting to register again"
    REGISTERED = "registered"
    STREAM_GRACE = "registered, stream lost"


# -- events ------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """The socket is bound and served; ``identity`` tells it from a replacement."""

    identity: Hashable


@dataclass(frozen=True)
class BindFailed:
    """Binding failed (the shell logs why)."""


@dataclass(frozen=True)
class Registered:
    """Register succeeded against the kubelet.sock of ``kubelet``."""

    kubelet: Hashable


@dataclass(frozen=True)
class RegisterFailed:
    """Register failed; ``already_connected``: the kubelet still holds this socket path."""

    error: str
    now: float
    already_connected: bool = False


@dataclass(frozen=True)
class FilesSeen:
    """What the plugin directory holds now: this server's socket and kubelet.sock."""

    socket: Hashable | None
    kubelet: Hashable | None


@dataclass(frozen=True)
class StreamChanged:
    """A ListAndWatch stream arrived (``opened``) or ended on the server of bind ``epoch``."""

    epoch: int
    opened: bool


@dataclass(frozen=True)
class TimerFired:
    """The wait asked for last has passed."""


Event = Bound | BindFailed | Registered | RegisterFailed | FilesSeen | StreamChanged | TimerFired

# -- actions -----------------------------------------------------------------


@dataclass(frozen=True)
class Bind:
    """Remove a stale socket, bind ``socket_name`` and serve; answer Bound or BindFailed."""

    socket_name: str
    reason: str | None = None


@dataclass(frozen=True)
class Close:
    """End the streams, stop serving and remove the socket this server bound."""


@dataclass(frozen=True)
class Register:
    """Call Registration/Register; answer Registered or RegisterFailed."""

    reason: str | None = None


@dataclass(frozen=True)
class Wait:
    """Answer TimerFired after ``delay`` seconds, unless another action or event comes first."""

    delay: float


@dataclass(frozen=True)
class ReportFailing:
    """Registration has failed for ``seconds``: tell the operator once (a Kubernetes Event)."""

    error: str
    seconds: float


Action = Bind | Close | Register | Wait | ReportFailing


@dataclass
class Registration:
    """The registration of one resource's server with the kubelet."""

    base_socket_name: str
    plugin_dir: str
    generation: int = 1
    #: registration failing this long is reported once (ReportFailing)
    report_after: float = 60.0
    phase: Phase = Phase.UNBOUND
    #: counts binds: streams of an older server do not count
    epoch: int = 0
    attempt: int = 0
    bind_backoff: Backoff = field(default_factory=lambda: Backoff(BACKOFF_FIRST, BACKOFF_MAX, (1.0, 1.0)))
    register_backoff: Backoff = field(default_factory=lambda: Backoff(BACKOFF_FIRST, BACKOFF_MAX, (0.8, 1.2)))
    _bound: Hashable | None = None
    _kubelet: Hashable | None = None
    _streams: int = 0
    _stream_lost: bool = False
    _failing_since: float | None = None
    _reported: bool = False

    @property
    def socket_name(self) -> str:
        """The socket file this generation serves on (the one place that decides it)."""
        return generation_socket_name(self.base_socket_name, self.generation, self.plugin_dir)

    @property
    def registered(self) -> bool:
        """The kubelet has taken this resource's registration."""
        return self.phase in (Phase.REGISTERED, Phase.STREAM_GRACE)

    @property
    def waiting(self) -> bool:
        """A Wait asked for is still wanted."""
        return self.phase in (Phase.BIND_WAIT, Phase.REGISTER_WAIT, Phase.STREAM_GRACE)

    def start(self) -> list[Action]:
        """The first actions: bind."""
        return [Bind(self.socket_name)]

    def handle(self, event: Event) -> list[Action]:
        """The actions that follow ``event``."""
        match event:
            case Bound(identity=identity):
                return self._bound_now(identity)
            case BindFailed():
                self.phase = Phase.BIND_WAIT
                return [Wait(self.bind_backoff.next_delay())]
            case Registered(kubelet=kubelet):
                return self._registered(kubelet)
            case RegisterFailed():
                return self._register_failed(event)
            case FilesSeen(socket=socket, kubelet=kubelet):
                return self._files(socket, kubelet)
            case StreamChanged(epoch=epoch, opened=True):
                if epoch == self.epoch:
                    self._streams += 1
                    self._stream_lost = False
                    if self.phase is Phase.STREAM_GRACE:
                        self.phase = Phase.REGISTERED
                return []
            case StreamChanged(epoch=epoch, opened=False):
                return self._stream_closed(epoch)
            case TimerFired():
                return self._timer()
        raise AssertionError(f"unknown event {event!r}")

    # -- transitions -------------------------------------------------------

    def _rebind(self, reason: str) -> list[Action]:
        self.phase = Phase.UNBOUND
        self._bound = None
        self._streams = 0
        self._stream_lost = False
        return [Close(), Bind(self.socket_name, reason)]

    def _bound_now(self, identity: Hashable) -> list[Action]:
        self.epoch += 1
        self._bound = identity
        self.bind_backoff.reset()
        return self._register()

    def _register(self, reason: str | None = None) -> list[Action]:
        self.phase = Phase.REGISTERING
        self._stream_lost = False
        return [Register(reason)]

    def _registered(self, kubelet: Hashable) -> list[Action]:
        self._kubelet = kubelet
        self.attempt = 0
        self.register_backoff.reset()
        self._failing_since = None
        self._reported = False
        if self._stream_lost and self._streams == 0:
            # the stream ended while Register was on its way: give it the grace
            self.phase = Phase.STREAM_GRACE
            return [Wait(STREAM_GRACE)]
        self.phase = Phase.REGISTERED
        return []

    def _register_failed(self, event: RegisterFailed) -> list[Action]:
        if event.already_connected:
            # The kubelet refuses this path while it holds an old stream on it, and may
            # never let go (it drops its record of the old client on this refusal):
            # serve under the next generation's name instead.
            before = self.socket_name
            self.generation += 1
            return self._rebind(f"kubelet still holds {before}; moving to {self.socket_name}")
        self.attempt += 1
        if self._failing_since is None:
            self._failing_since = event.now
        self.phase = Phase.REGISTER_WAIT
        actions: list[Action] = [Wait(self.register_backoff.next_delay())]
        failing = event.now - self._failing_since
        if not self._reported and failing >= self.report_after:
            self._reported = True
            actions.append(ReportFailing(event.error, failing))
        return actions

    def _files(self, socket: Hashable | None, kubelet: Hashable | None) -> list[Action]:
        if self._bound is None:
            return []
        if socket != self._bound:
            return self._rebind("socket deleted or replaced")
        if kubelet is None:
            return []
        if self.phase is Phase.REGISTER_WAIT:
            return self._register()  # kubelet.sock is there: retry now
        if self.registered and kubelet != self._kubelet:
            return self._register("kubelet.sock recreated")
        return []

    def _stream_closed(self, epoch: int) -> list[Action]:
        if epoch != self.epoch:
            return []
        self._streams = max(0, self._streams - 1)
        if self._streams:
            return []
        self._stream_lost = True
        if self.phase is Phase.REGISTERED:
            self.phase = Phase.STREAM_GRACE
            return [Wait(STREAM_GRACE)]
        return []

    def _timer(self) -> list[Action]:
        if self.phase is Phase.BIND_WAIT:
            self.phase = Phase.UNBOUND
            return [Bind(self.socket_name)]
        if self.phase is Phase.REGISTER_WAIT:
            return self._register()
        if self.phase is Phase.STREAM_GRACE:
            if self._stream_lost and self._streams == 0:
                return self._register("ListAndWatch stream ended without a new one")
            self.phase = Phase.REGISTERED
        return []
