"""Handlers that never return: the group's handler timeout, and prefetched events handed back.

Issue 18, defect 8: a hung handler held its event forever (kept alive by in_progress), and
with every slot hung, the events the worker had prefetched waited there while another,
idle worker of the group could have taken them.
"""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from consumers import Delivery, GroupConfigError, Worker, deadletter
from jetgate.examples.orders.v1 import orders_pb2
from tests.consumers.conftest import STREAM, group, running, store
from tests.support.eventually import eventually


def test_the_handler_timeout_defaults_to_ten_ack_waits_and_must_be_positive() -> None:
    assert group(ack_wait=3).effective_handler_timeout == 30
    assert group(ack_wait=3, handler_timeout=1.5).effective_handler_timeout == 1.5
    with pytest.raises(GroupConfigError, match="handler_timeout"):
        group(handler_timeout=0)


async def test_a_hung_handler_is_cancelled_and_its_event_retried(
    nc: Client, js: JetStreamContext
) -> None:
    await store(js, "o-1")
    billing = group(handler_timeout=0.5, max_deliver=3, backoff=(0.1,))
    attempts: list[int] = []
    cancelled: list[int] = []

    @billing.handler(orders_pb2.OrderPlaced)
    async def hangs_once(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        if delivery.attempt == 1:
            try:
                await asyncio.Event().wait()  # never set
            except asyncio.CancelledError:
                cancelled.append(delivery.attempt)
                raise

    worker = Worker(billing, nc)
    async with running(worker):
        await eventually(lambda: worker.stats.processed == 1)

    assert attempts == [1, 2]
    assert cancelled == [1]
    stats = worker.stats
    assert (stats.failed, stats.timed_out, stats.dead_lettered) == (1, 1, 0)
    info = await js.consumer_info(STREAM, "billing")
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def test_a_handler_that_always_hangs_is_dead_lettered_after_the_last_attempt(
    nc: Client, js: JetStreamContext
) -> None:
    sequence = await store(js, "o-1", event_id="e-hung")
    billing = group(handler_timeout=0.3, max_deliver=2, backoff=(0.1,))

    @billing.handler(orders_pb2.OrderPlaced)
    async def hangs(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        await asyncio.Event().wait()

    worker = Worker(billing, nc)
    async with running(worker):
        await eventually(lambda: worker.stats.dead_lettered == 1)

    [dead] = [d async for d in deadletter.dead_letters(js, "billing")]
    assert (dead.event_id, dead.origin_sequence) == ("e-hung", sequence)
    assert (dead.reason, dead.attempts) == ("exhausted", 2)
    assert "HandlerTimeout" in dead.error
    assert "0.3s" in dead.error
    assert worker.stats.timed_out == 2
    info = await js.consumer_info(STREAM, "billing")
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def test_with_every_slot_hung_prefetched_events_go_to_another_worker(
    nc: Client, js: JetStreamContext
) -> None:
    # ack_wait 1 s: slots busy that long with no handler finishing count as stuck. The
    # handler timeout (60 s) is far away: the hand-back, not the timeout, frees the events.
    billing = group(concurrency=1, ack_wait=1.0, handler_timeout=60, max_deliver=20)
    started = asyncio.Event()
    done: list[str] = []

    @billing.handler(orders_pb2.OrderPlaced)
    async def handle(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        if event.order_id == "stuck":
            started.set()
            await asyncio.Event().wait()
        done.append(event.order_id)

    stuck = Worker(billing, nc, prefetch=3)
    async with running(stuck):
        await store(js, "stuck")
        await asyncio.wait_for(started.wait(), 30)
        for key in ("o-1", "o-2", "o-3"):
            await store(js, key)
        # The three wait for the one slot, unless handed back already.
        await eventually(lambda: stuck.stats.in_flight + stuck.stats.handed_back >= 4)
        idle = Worker(billing, nc)
        async with running(idle):
            await eventually(lambda: sorted(done) == ["o-1", "o-2", "o-3"])
        assert stuck.stats.processed == 0
        assert stuck.stats.handed_back >= 3
        assert idle.stats.processed == 3
        assert stuck.stats.in_flight == 1  # still the hung one


async def test_an_event_at_its_last_delivery_is_not_handed_back(
    nc: Client, js: JetStreamContext
) -> None:
    # max_deliver 1: every prefetched event is at its last delivery. Handed back, it would
    # come again past the group's limit and be dead-lettered without its handler running; it
    # waits for this worker's slot instead (freed here by the handler timeout).
    billing = group(concurrency=1, ack_wait=1.0, handler_timeout=4.0, max_deliver=1)
    started = asyncio.Event()
    done: list[str] = []

    @billing.handler(orders_pb2.OrderPlaced)
    async def handle(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        if event.order_id == "stuck":
            started.set()
            await asyncio.Event().wait()
        done.append(event.order_id)

    worker = Worker(billing, nc, prefetch=3)
    async with running(worker):
        await store(js, "stuck")
        await asyncio.wait_for(started.wait(), 30)
        await store(js, "o-1")
        await eventually(lambda: done == ["o-1"], what="o-1 handled")
    assert worker.stats.handed_back == 0
    assert not [
        d async for d in deadletter.dead_letters(js, "billing") if "o-1" in d.origin_subject
    ]
