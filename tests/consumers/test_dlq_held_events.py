"""Events held for their dead letter while DLQ is unavailable (issue 18 defect 3, continued).

Before: a held event kept its handler slot, so once as many events as slots were held the
group handled nothing more until DLQ came back (tests/faults test_dlq_stream_missing:
"6 events not tried yet"), and prefetched events were handed back, using up deliveries
without their handler running. And each held event retried only at its own backoff (up to
30 s) after DLQ was back. Now a held event frees its slot (it still counts toward what the
worker holds: prefetch), and a dead letter stored wakes every held retry at once.
"""

from __future__ import annotations

import logging

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from consumers import ConsumerGroup, Delivery, Reject, Worker, deadletter, handling
from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2
from tests.consumers.conftest import STREAM, group, running, store
from tests.support.eventually import eventually

DLQ_BROKEN = StreamConfig(name=wire.DEAD_LETTER_STREAM, subjects=["elsewhere.>"])
DLQ_FIXED = StreamConfig(name=wire.DEAD_LETTER_STREAM, subjects=[f"{wire.DEAD_LETTER_PREFIX}.>"])


def rejecting(concurrency: int) -> tuple[ConsumerGroup, list[str]]:
    billing = group(max_deliver=2, backoff=(0.1,), ack_wait=2.0, concurrency=concurrency)
    attempted: list[str] = []

    @billing.handler(orders_pb2.OrderPlaced)
    async def refuse(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        attempted.append(delivery.event_id)
        raise Reject("refused")

    return billing, attempted


def not_stored(caplog: pytest.LogCaptureFixture) -> int:
    return sum("not stored" in r.getMessage() for r in caplog.records)


async def test_held_events_leave_their_handler_slots_to_other_events(
    nc: Client, js: JetStreamContext
) -> None:
    billing, attempted = rejecting(concurrency=2)
    worker = Worker(billing, nc)
    async with running(worker):
        await eventually(lambda: worker.ready.is_set())
        await js.update_stream(DLQ_BROKEN)
        ids = [f"e-{i}" for i in range(6)]
        for event_id in ids:
            await store(js, f"o-{event_id}", event_id=event_id)

        def all_attempted() -> None:
            assert sorted(attempted) == ids, f"attempted: {sorted(attempted)}"

        # Before the fix: two held events took both slots; the other four never ran.
        await eventually(all_attempted, what="every event's handler run once")
        info = await js.consumer_info(STREAM, "billing")
        assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (6, 0, 0)
        assert worker.stats.dead_lettered == 0

        await js.update_stream(DLQ_FIXED)
        await eventually(lambda: worker.stats.dead_lettered == len(ids))

    dead = [d.event_id async for d in deadletter.dead_letters(js, "billing")]
    assert sorted(dead) == ids
    assert sorted(attempted) == ids  # once each: no delivery used up while held
    info = await js.consumer_info(STREAM, "billing")
    assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)


async def test_a_stored_dead_letter_wakes_every_held_retry(
    nc: Client,
    js: JetStreamContext,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.WARNING, logger="jetgate.consumers")
    # After its first failed store each held event would sleep an hour on its own backoff.
    monkeypatch.setattr(handling, "DEAD_LETTER_RETRY_FIRST", 3600.0)
    billing, attempted = rejecting(concurrency=4)
    worker = Worker(billing, nc)
    async with running(worker):
        await eventually(lambda: worker.ready.is_set())
        await js.update_stream(DLQ_BROKEN)
        for event_id in ("e-1", "e-2"):
            await store(js, f"o-{event_id}", event_id=event_id)
        await eventually(lambda: not_stored(caplog) >= 2, what="both stores failed")

        await js.update_stream(DLQ_FIXED)
        # A new event's dead letter is stored at its first try: DLQ is back, so the held
        # ones try again now rather than in an hour.
        await store(js, "o-e-3", event_id="e-3")
        await eventually(lambda: worker.stats.dead_lettered == 3, what="all three dead-lettered")

    dead = [d.event_id async for d in deadletter.dead_letters(js, "billing")]
    assert sorted(dead) == ["e-1", "e-2", "e-3"]
    assert sorted(attempted) == ["e-1", "e-2", "e-3"]
