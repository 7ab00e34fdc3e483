"""Lease expiry by observation (spookd.leasing): pure, no clock, no API server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from spookd.leasing import Cadence, Holding, LeaseBook, LeaseRecord

KEY = ("skao.int/oscilloscope", "0001")


def record(holder: str = "node-a", renew: str = "t1", rv: str = "10", duration: float = 15) -> LeaseRecord:
    return LeaseRecord(holder=holder, renew_time=renew, duration=duration, resource_version=rv)


def test_a_lease_held_elsewhere_expires_only_after_its_duration_unchanged_on_the_local_clock() -> None:
    book = LeaseBook()
    book.observe(KEY, record(), now=100.0)
    assert book.held_elsewhere(KEY, "node-b", now=114.9)
    assert not book.may_take(KEY, "node-b", now=114.9)
    assert not book.held_elsewhere(KEY, "node-b", now=115.0)
    assert book.may_take(KEY, "node-b", now=115.0)


def test_the_renew_time_written_is_never_compared_with_any_clock() -> None:
    # A renew time far in the past (the holder's clock behind) or future (ahead)
    # makes no difference: only how long this node has seen it unchanged counts.
    for renew in ("1970-01-01T00:00:00+00:00", "2999-01-01T00:00:00+00:00"):
        book = LeaseBook()
        book.observe(KEY, record(renew=renew), now=5.0)
        assert book.held_elsewhere(KEY, "node-b", now=19.0)
        assert not book.held_elsewhere(KEY, "node-b", now=20.0)


def test_a_renewal_starts_the_observation_again() -> None:
    book = LeaseBook()
    book.observe(KEY, record(renew="t1", rv="10"), now=0.0)
    book.observe(KEY, record(renew="t2", rv="11"), now=10.0)
    assert book.held_elsewhere(KEY, "node-b", now=24.0)
    assert not book.held_elsewhere(KEY, "node-b", now=25.0)


def test_seeing_the_same_record_again_keeps_its_age() -> None:
    # A relist after 410 or a reconnect shows the same record: it must not look fresh.
    book = LeaseBook()
    book.observe(KEY, record(rv="10"), now=0.0)
    book.replace_all({KEY: record(rv="10")}, now=14.0)
    book.observe(KEY, record(rv="12"), now=14.5)  # a metadata-only write, same renewal
    assert not book.held_elsewhere(KEY, "node-b", now=15.0)
    observation = book.get(KEY)
    assert observation is not None
    assert observation.record.resource_version == "12"


def test_a_listing_drops_leases_that_are_gone() -> None:
    book = LeaseBook()
    book.observe(KEY, record(), now=0.0)
    book.replace_all({}, now=1.0)
    assert book.get(KEY) is None
    assert book.may_take(KEY, "node-b", now=1.0)


def test_the_holder_and_an_empty_holder_never_block() -> None:
    book = LeaseBook()
    book.observe(KEY, record(holder="node-b"), now=0.0)
    assert not book.held_elsewhere(KEY, "node-b", now=1.0)
    assert book.may_take(KEY, "node-b", now=1.0)
    book.observe(KEY, record(holder=""), now=2.0)
    assert not book.held_elsewhere(KEY, "node-c", now=2.0)


def test_next_expiry_is_the_earliest_lease_held_elsewhere() -> None:
    book = LeaseBook()
    book.observe(KEY, record(duration=15), now=0.0)
    book.observe(("r", "2"), record(duration=3), now=1.0)
    book.observe(("r", "3"), record(holder="me", duration=1), now=1.0)
    assert book.next_expiry("me", now=2.0) == 4.0
    assert book.next_expiry("me", now=4.0) == 15.0
    assert book.next_expiry("me", now=15.0) is None


def test_a_holder_gives_up_a_duration_after_the_last_successful_renewal_was_sent() -> None:
    held = Holding(resource_version="10", renewed_at=0.0, duration=15, since=0.0)
    assert not held.lapsed(14.9)
    held.renewed("11", sent_at=10.0)
    assert not held.lapsed(24.9)
    assert held.lapsed(25.0)
    held.renewed("12", sent_at=5.0)  # a late answer to an older request does not extend it
    assert held.lapsed(25.0)
    assert held.resource_version == "12"


def test_a_held_claim_is_renewed_at_0_7_of_the_duration_after_the_last_success_was_sent() -> None:
    # 15 s: one renewal per 10.5 s, 5.7 a minute per held device (target: <= 6).
    held = Holding(resource_version="10", renewed_at=0.0, duration=15, since=0.0)
    assert held.next_renewal() == pytest.approx(10.5)
    assert not held.due(10.4)
    assert held.due(10.5)
    assert 60 / Cadence(15).renew_after <= 6
    held.renewed("11", sent_at=10.5)
    assert held.next_renewal() == pytest.approx(21.0)


def test_a_failed_renewal_is_retried_until_the_claim_lapses() -> None:
    held = Holding(resource_version="10", renewed_at=0.0, duration=15, since=0.0)
    tries = []
    now = held.next_renewal()
    while not held.lapsed(now):
        tries.append(now)
        held.failed(now)  # every try fails at once (connection refused)
        now = held.next_renewal()
    # Five tries in the 4.5 s between the first one and the give-up, as client-go's
    # defaults make five tries (retryPeriod 2 s) within renewDeadline 10 s.
    assert tries == pytest.approx([10.5, 11.5, 12.5, 13.5, 14.5])
    held.renewed("11", sent_at=14.5)  # the last one got through: back to the quiet period
    assert held.next_renewal() == pytest.approx(25.0)
    assert not held.lapsed(29.4)


def test_a_conflict_with_its_own_applied_renewal_is_retried_at_once_then_like_a_failure() -> None:
    held = Holding(resource_version="10", renewed_at=0.0, duration=15, since=0.0)
    held.failed(10.5)  # the due try timed out: applied, its answer lost
    held.resource_version = "11"  # read back after the next try's 409
    held.conflicted(12.0)
    assert held.next_renewal() == 12.0
    held.conflicted(12.1)  # a second conflict in a row: no busy loop
    assert held.next_renewal() == pytest.approx(13.1)
    assert held.renewed_at == 0.0, "an unanswered renewal never extends the claim"
    held.renewed("12", sent_at=13.1)
    held.conflicted(20.0)  # a new conflict after a success goes at once again
    assert held.next_renewal() == 20.0


def test_two_renewal_tries_that_hang_fit_before_a_claim_lapses() -> None:
    # From 10 s up (below, the 1 s floor of a try's timeout binds): a first try that
    # hangs until its timeout still leaves a second try, hung too, time to answer.
    for duration in (10.0, 15.0, 30.0, 120.0):
        cadence = Cadence(duration)
        second_answered_by = cadence.renew_after + 2 * cadence.try_timeout + cadence.retry_every
        assert second_answered_by <= duration, duration
    cadence = Cadence(15)
    assert (cadence.renew_after, cadence.retry_every, cadence.try_timeout) == pytest.approx((10.5, 1.0, 1.5))


@pytest.mark.anyio
async def test_a_malformed_lease_is_skipped_and_ends_nothing() -> None:
    from types import SimpleNamespace

    from kubernetes_asyncio import client

    from spookd.kube.leases import LeaseClaims
    from spookd.kube.watch import Changed, Listed

    def lease(resource: str, device: str, duration: object) -> SimpleNamespace:
        return SimpleNamespace(
            metadata=SimpleNamespace(
                annotations={"spookd.skao.int/resource": resource, "spookd.skao.int/device": device},
                resource_version="7",
            ),
            spec=SimpleNamespace(
                holder_identity="node-a", renew_time="t", acquire_time=None, lease_duration_seconds=duration
            ),
        )

    api = client.ApiClient()
    try:
        blocked: dict[str, set[str]] = {}
        claims = LeaseClaims(api, "ns", "node-b", "/nonexistent", lambda r, d: blocked.update({r: d}))
        claims.set_shared([("r", "good"), ("r", "bad")])
        claims._take(Listed([lease("r", "bad", "fifteen"), lease("r", "good", 15)], "9"))
        assert claims.book.get(("r", "good")) is not None
        assert claims.book.get(("r", "bad")) is None
        assert blocked == {"r": {"good"}}

        class Events:
            async def events(self) -> AsyncIterator[Changed]:
                yield Changed("MODIFIED", lease("r", "bad", "fifteen"), {})
                yield Changed("MODIFIED", lease("r", "other", 15), {})

        await claims._follow(Events())  # type: ignore[arg-type]
        assert claims.book.get(("r", "other")) is not None
    finally:
        await api.close()


def test_nothing_expires_while_this_node_cannot_observe() -> None:
    # The watch is broken: a renewal may have happened unseen, so the age proves nothing.
    book = LeaseBook()
    book.observe(KEY, record(), now=0.0)
    assert book.held_elsewhere(KEY, "node-b", now=100.0, observing=False)
    assert not book.may_take(KEY, "node-b", now=100.0, observing=False)
    assert not book.held_elsewhere(KEY, "node-b", now=100.0, observing=True)


def test_time_this_node_could_not_observe_does_not_count() -> None:
    book = LeaseBook()
    book.observe(KEY, record(duration=15), now=0.0)
    book.discount(8.0)  # the API server was down for 8 s
    assert book.held_elsewhere(KEY, "node-b", now=22.9)
    assert not book.held_elsewhere(KEY, "node-b", now=23.0)
