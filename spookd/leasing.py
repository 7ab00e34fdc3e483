"""When a device's Lease counts as held: judged by observation, never by timestamps (pure).

Kubernetes' own leader election (client-go ``leaderelection``) never compares another
machine's ``renewTime`` with the local wall clock: clocks of different nodes differ
(NTP not synced after boot, a VM resumed from suspend). A node that is not the
holder notes *when, on its own monotonic clock,* it first saw the current record
(holder, renew time, duration); the Lease expires for it once that record has stayed
unchanged for the Lease duration. The holder counts the duration from the moment it
*sent* its last successful renewal, so it gives up no later than any observer can
take over. Every time here is a ``time.monotonic()`` reading passed in by the shell;
nothing in this module reads a clock or does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

Key = tuple[str, str]


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says, as far as expiry is concerned."""

    holder: str
    #: The holder's renew time exactly as written (its clock: compared for equality only).
    renew_time: str
    duration: float
    resource_version: str


@dataclass(frozen=True)
class Observation:
    """A record and the local monotonic time it was first seen."""

    record: LeaseRecord
    seen_at: float

    def same_record(self, other: LeaseRecord) -> bool:
        """True when ``other`` is the same write of the holder (only the resourceVersion may differ)."""
        mine = self.record
        return (mine.holder, mine.renew_time, mine.duration) == (
            other.holder,
            other.renew_time,
            other.duration,
        )

    def expired(self, now: float) -> bool:
        """The record has stayed unchanged for its whole duration on this node's clock."""
        return now - self.seen_at >= self.record.duration

    def expires_at(self) -> float:
        """The local monotonic time at which this observation expires."""
        return self.seen_at + self.record.duration


class LeaseBook:
    """Every device Lease this node has seen, and since when (local monotonic time)."""

    def __init__(self) -> None:
        self._seen: dict[Key, Observation] = {}

    def observe(self, key: Key, record: LeaseRecord, now: float) -> Observation:
        """Note a record read at ``now``; an unchanged record keeps its first-seen time."""
        known = self._seen.get(key)
        if known is not None and known.same_record(record):
            # A relist or a metadata-only change: the same renewal, seen again. Its age
            # keeps counting from when it was first seen.
            observation = Observation(record, known.seen_at)
        else:
            observation = Observation(record, now)
        self._seen[key] = observation
        return observation

    def forget(self, key: Key) -> None:
        """The Lease was deleted."""
        self._seen.pop(key, None)

    def replace_all(self, records: dict[Key, LeaseRecord], now: float) -> None:
        """A full listing: keep the age of unchanged records, drop the Leases that are gone."""
        for key in set(self._seen) - set(records):
            del self._seen[key]
        for key, record in records.items():
            self.observe(key, record, now)

    def discount(self, blind: float) -> None:
        """This node could not observe for ``blind`` seconds: that time does not count as seen.

        During an API server outage nobody can renew; counting it against the holder
        would offer its device elsewhere the moment the API server is back.
        """
        if blind > 0:
            self._seen = {
                key: Observation(seen.record, seen.seen_at + blind) for key, seen in self._seen.items()
            }

    def get(self, key: Key) -> Observation | None:
        """The current observation of a device's Lease, if any."""
        return self._seen.get(key)

    def held_elsewhere(self, key: Key, me: str, now: float, *, observing: bool = True) -> bool:
        """Another node names itself holder and the record has not expired by observation.

        While this node cannot observe (its watch broken, not yet listed again), time
        passing proves nothing: a renewal may have happened unseen, so nothing expires.
        """
        seen = self._seen.get(key)
        if seen is None or not seen.record.holder or seen.record.holder == me:
            return False
        return not observing or not seen.expired(now)

    def may_take(self, key: Key, me: str, now: float, *, observing: bool = True) -> bool:
        """This node may write the Lease: nobody holds it, it is ours, or it expired by observation."""
        return not self.held_elsewhere(key, me, now, observing=observing)

    def next_expiry(self, me: str, now: float) -> float | None:
        """The earliest future local time at which a Lease held elsewhere expires."""
        pending = [
            seen.expires_at()
            for seen in self._seen.values()
            if seen.record.holder and seen.record.holder != me and not seen.expired(now)
        ]
        return min(pending, default=None)


#: The holder renews a claim once this share of the Lease duration has passed since it
#: sent the last successful renewal (10.5 s of 15 s: 5.7 renewals a minute per device).
RENEW_AFTER = 0.7
#: A failed renewal is tried again after this share of the duration (1 s of 15 s)...
RETRY_EVERY = 1 / 15
#: ...and no try waits longer than this share for its answer (1.5 s of 15 s): two tries
#: that hang fit into the 0.3 of the duration between the first try and the give-up.
TRY_TIMEOUT = 0.1


@dataclass(frozen=True)
class Cadence:
    """When a holder writes its Lease, derived from the Lease duration alone.

    client-go's leader election gives a leader ``renewDeadline`` (10 s of a 15 s
    Lease) to get a renewal through, retrying every ``retryPeriod`` (2 s), and
    keeps the last third as the margin that makes the leader give up before any
    candidate, which counts from when it *saw* the renewal, takes over. Spookd's
    holder counts the duration from when it *sent* its last successful renewal, so
    that margin is built in and the whole duration is the holder's: it stays quiet
    for ``RENEW_AFTER`` of it (the API cost) and spends the rest retrying (what a
    cut or an API server restart may last at the worst moment).
    """

    duration: float

    @property
    def renew_after(self) -> float:
        """Seconds after the last successful renewal was sent that the next one is."""
        return self.duration * RENEW_AFTER

    @property
    def retry_every(self) -> float:
        """Seconds between the tries of a renewal that failed."""
        return max(0.2, self.duration * RETRY_EVERY)

    @property
    def try_timeout(self) -> float:
        """Seconds one renewal request may take."""
        return max(1.0, self.duration * TRY_TIMEOUT)


@dataclass
class Holding:
    """A claim this node holds: its Lease's resourceVersion and the time of the last renewal."""

    resource_version: str
    #: Local monotonic time at which the last successful write was *sent*.
    renewed_at: float
    duration: float
    #: Local monotonic time at which the claim was first taken (for the release grace).
    since: float
    #: Local monotonic time of the next renewal try (0: when the last write says).
    retry_at: float = 0.0
    #: The last try conflicted with this node's own newer record (read back since).
    reread: bool = False

    def renewed(self, resource_version: str, sent_at: float) -> None:
        """A renewal sent at ``sent_at`` succeeded."""
        self.resource_version = resource_version
        self.renewed_at = max(self.renewed_at, sent_at)
        self.retry_at = 0.0
        self.reread = False

    def conflicted(self, now: float) -> None:
        """A try met this node's own newer record (an earlier try applied unanswered).

        The next try goes at once, from the record read back; a second conflict in a row
        waits like any failed try, so a Lease rewritten under it never makes a busy loop.
        """
        if self.reread:
            self.failed(now)
        else:
            self.retry_at = now
        self.reread = True

    def failed(self, now: float) -> None:
        """A renewal try failed at ``now`` (network, 5xx, 429, timeout): try again soon."""
        self.retry_at = now + Cadence(self.duration).retry_every

    def next_renewal(self) -> float:
        """The local monotonic time at which this claim is to be renewed."""
        return self.retry_at or self.renewed_at + Cadence(self.duration).renew_after

    def due(self, now: float) -> bool:
        """A renewal of this claim is to be sent now."""
        return now >= self.next_renewal()

    def lapsed(self, now: float) -> bool:
        """The Lease duration has passed since the last successful renewal was sent."""
        return now - self.renewed_at >= self.duration
