"""The worker in this process against a real nats-server: outcomes, retries, dead letters."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from consumers import Delivery, GroupConfigError, Reject, Worker, deadletter
from gateway.embedded import NatsServer
from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2
from tests.consumers.conftest import (
    STREAM,
    group,
    heartbeats,
    recording,
    run_until,
    running,
    store,
)
from tests.support.eventually import eventually


async def test_typed_handlers_get_each_event_once_with_its_delivery(
    nc: Client, js: JetStreamContext
) -> None:
    placed_seq = await store(js, "o-1", event_id="e-placed")
    paid_seq = await store(js, "o-1", orders_pb2.OrderPaid(order_id="o-1", method="card"))
    billing = group()
    seen: list[tuple[str, Delivery]] = []

    @billing.handler(orders_pb2.OrderPlaced)
    async def placed(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        seen.append((event.order_id, delivery))

    @billing.handler(orders_pb2.OrderPaid)
    async def paid(event: orders_pb2.OrderPaid, delivery: Delivery) -> None:
        seen.append((event.method, delivery))

    stats = await run_until(Worker(billing, nc), lambda: len(seen) == 2)

    by_value = dict(seen)
    delivery = by_value["o-1"]
    assert delivery.event_id == "e-placed"
    assert delivery.event_type == "jetgate.examples.orders.v1.OrderPlaced"
    assert (delivery.key, delivery.subject) == ("o-1", "orders.OrderPlaced.o-1")
    assert (delivery.stream, delivery.sequence, delivery.attempt) == (STREAM, placed_seq, 1)
    assert (delivery.source, delivery.group) == ("tests", "billing")
    assert delivery.headers == {"tenant": "t-1"}
    assert delivery.raw_headers[wire.MSG_ID] == "e-placed"
    assert by_value["card"].sequence == paid_seq
    assert (stats.processed, stats.failed, stats.redelivered, stats.in_flight) == (2, 0, 0, 0)
    info = await js.consumer_info(STREAM, "billing")
    assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)


async def test_failures_are_retried_after_the_backoff_delays(
    nc: Client, js: JetStreamContext
) -> None:
    await store(js, "o-1")
    billing = group(backoff=(0.4, 0.8), max_deliver=5)
    attempts: list[tuple[int, float]] = []

    @billing.handler(orders_pb2.OrderPlaced)
    async def flaky(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        attempts.append((delivery.attempt, time.monotonic()))
        if delivery.attempt < 3:
            raise RuntimeError("payment provider down")

    stats = await run_until(Worker(billing, nc), lambda: len(attempts) == 3)

    assert [a for a, _ in attempts] == [1, 2, 3]
    (_, t1), (_, t2), (_, t3) = attempts
    assert t2 - t1 >= 0.4
    assert t3 - t2 >= 0.8
    assert (stats.processed, stats.failed, stats.redelivered, stats.dead_lettered) == (1, 2, 2, 0)


async def test_poison_events_are_dead_lettered_intact_and_redriven(
    nc: Client, js: JetStreamContext
) -> None:
    undecodable = await store(js, "o-1", payload=b"\xff\xff\xff", event_id="e-undecodable")
    unknown = await store(js, "o-2", orders_pb2.OrderCancelled(order_id="o-2"), event_id="e-unk")
    rejected = await store(js, "o-3", event_id="e-reject")
    failing = await store(js, "o-4", event_id="e-fail")
    billing = group(max_deliver=2, backoff=(0.1,))
    calls: list[str] = []

    @billing.handler(orders_pb2.OrderPlaced)
    async def strict(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        calls.append(delivery.event_id)
        if event.order_id == "o-3":
            raise Reject("customer is blocked")
        raise ValueError("always broken")

    worker = Worker(billing, nc)
    await run_until(worker, lambda: worker.stats.dead_lettered == 4)
    assert calls.count("e-fail") == 2
    assert calls.count("e-reject") == 1

    dead = {d.event_id: d for d in [d async for d in deadletter.dead_letters(js, "billing")]}
    assert set(dead) == {"e-undecodable", "e-unk", "e-reject", "e-fail"}
    expected = {
        "e-undecodable": (undecodable, "undecodable", 1),
        "e-unk": (unknown, "unknown-type", 1),
        "e-reject": (rejected, "reject", 1),
        "e-fail": (failing, "exhausted", 2),
    }
    for event_id, (sequence, reason, attempts) in expected.items():
        letter = dead[event_id]
        assert (letter.origin_stream, letter.origin_sequence) == (STREAM, sequence)
        assert (letter.reason, letter.attempts, letter.group) == (reason, attempts, "billing")
        assert letter.headers["tenant"] == "t-1"
        assert letter.headers[wire.CE_ID] == event_id
        original = await js.get_msg(STREAM, sequence)
        assert letter.payload == original.data
        assert letter.origin_subject == original.subject
    assert "customer is blocked" in dead["e-reject"].error
    assert "ValueError: always broken" in dead["e-fail"].error
    info = await js.consumer_info(STREAM, "billing")
    assert (info.num_ack_pending, info.num_pending) == (0, 0)

    redriven = await deadletter.redrive(js, "billing")
    assert len(redriven) == 4
    assert [d async for d in deadletter.dead_letters(js, "billing")] == []

    fixed = group(max_deliver=2, backoff=(0.1,))
    handled: dict[str, Delivery] = {}

    @fixed.handler(orders_pb2.OrderPlaced)
    async def lenient(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        handled[delivery.event_id] = delivery

    @fixed.handler(orders_pb2.OrderCancelled)
    async def cancelled(event: orders_pb2.OrderCancelled, delivery: Delivery) -> None:
        handled[delivery.event_id] = delivery

    fixed_worker = Worker(fixed, nc)
    await run_until(
        fixed_worker, lambda: len(handled) == 3 and fixed_worker.stats.dead_lettered == 1
    )
    assert set(handled) == {"e-unk", "e-reject", "e-fail"}
    assert handled["e-reject"].subject == "orders.OrderPlaced.o-3"
    assert handled["e-reject"].sequence > failing
    # The undecodable payload cannot be fixed by a handler: it is dead again.
    [again] = [d async for d in deadletter.dead_letters(js, "billing")]
    assert (again.event_id, again.reason) == ("e-undecodable", "undecodable")


async def test_redriven_events_are_skipped_by_other_groups(
    nc: Client, js: JetStreamContext
) -> None:
    await store(js, "o-1", event_id="e-1")
    billing, audit = group("billing"), group("audit")
    audited: list[str] = []

    @billing.handler(orders_pb2.OrderPlaced)
    async def refuse(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        raise Reject("not yet")

    @audit.handler(orders_pb2.OrderPlaced)
    async def record(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        audited.append(delivery.event_id)

    billing_worker, audit_worker = Worker(billing, nc), Worker(audit, nc)
    await run_until(billing_worker, lambda: billing_worker.stats.dead_lettered == 1)
    await run_until(audit_worker, lambda: audited == ["e-1"])
    assert len(await deadletter.redrive(js, "billing")) == 1

    audit_again = Worker(audit, nc)
    await run_until(audit_again, lambda: audit_again.stats.skipped == 1)
    assert audited == ["e-1"]


async def test_a_long_handler_keeps_its_event_with_in_progress(
    nc: Client, js: JetStreamContext
) -> None:
    await store(js, "o-1")
    billing = group(ack_wait=1.0)
    attempts: list[int] = []

    @billing.handler(orders_pb2.OrderPlaced)
    async def slow(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        # Held past ack_wait twice over: by five in_progress, ack_wait/2 apart.
        await eventually(lambda: sum(beats.values()) >= 5)

    worker = Worker(billing, nc)
    async with heartbeats(nc, "billing") as beats:
        stats = await run_until(worker, lambda: worker.stats.processed == 1)
    assert attempts == [1]
    assert stats.redelivered == 0


async def test_an_event_left_by_a_dead_worker_on_its_last_attempt_is_dead_lettered(
    nc: Client, js: JetStreamContext
) -> None:
    await store(js, "o-1", event_id="e-1")
    billing = group(max_deliver=1, ack_wait=0.5)
    ran: list[int] = []

    @billing.handler(orders_pb2.OrderPlaced)
    async def handler(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        ran.append(delivery.attempt)

    await js.add_consumer(STREAM, billing.consumer_config())
    # A worker that takes the event and dies: nothing acknowledges it.
    psub = await js.pull_subscribe_bind("billing", stream=STREAM)
    [taken] = await psub.fetch(1, timeout=5)
    await psub.unsubscribe()
    assert taken.metadata.num_delivered == 1

    worker = Worker(billing, nc)
    await run_until(worker, lambda: worker.stats.dead_lettered == 1)
    assert ran == []
    [letter] = [d async for d in deadletter.dead_letters(js, "billing")]
    assert (letter.event_id, letter.reason, letter.attempts) == ("e-1", "exhausted", 2)


async def test_drain_finishes_and_acknowledges_in_flight_events(
    nc: Client, js: JetStreamContext
) -> None:
    for index in range(8):
        await store(js, f"o-{index}")
    billing = group()
    started: list[str] = []
    stop = asyncio.Event()

    @billing.handler(orders_pb2.OrderPlaced)
    async def slow(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        started.append(event.order_id)
        await stop.wait()  # finishes only once the worker has been told to stop

    worker = Worker(billing, nc)
    task = asyncio.create_task(worker.run(stop))
    await eventually(lambda: len(started) == 8)  # stop while all 8 run
    stop.set()
    stats = await asyncio.wait_for(task, 30)
    assert stats.processed == 8
    info = await js.consumer_info(STREAM, "billing")
    assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)


async def test_worker_resumes_after_a_nats_server_restart(
    nats_server: NatsServer, nc: Client, js: JetStreamContext
) -> None:
    await store(js, "o-before")
    billing = group()
    handled = recording(billing)

    async with running(Worker(billing, nc)):
        await eventually(lambda: handled == ["o-before"])
        nats_server.restart()
        await eventually(lambda: nc.is_connected)
        # JetStream needs a moment after the restart.
        await eventually(lambda: store(js, "o-after"), retry_on=(Exception,))
        await eventually(lambda: handled == ["o-before", "o-after"])


async def test_a_filter_outside_the_stream_is_a_group_config_error(
    nc: Client, js: JetStreamContext
) -> None:
    outside = group(filter_subjects=["payments.>"])
    with pytest.raises(GroupConfigError, match=r"filter 'payments.>' matches no subject"):
        await asyncio.wait_for(Worker(outside, nc).run(asyncio.Event()), 10)


async def test_a_consumer_change_jetstream_refuses_is_a_group_config_error(
    nc: Client, js: JetStreamContext
) -> None:
    await js.add_consumer(
        STREAM,
        ConsumerConfig(durable_name="billing", name="billing", deliver_policy=DeliverPolicy.NEW),
    )
    with pytest.raises(GroupConfigError, match="deliver policy"):
        await asyncio.wait_for(Worker(group(), nc).run(asyncio.Event()), 10)


async def test_worker_recreates_a_consumer_an_operator_deleted(
    nc: Client, js: JetStreamContext
) -> None:
    await store(js, "o-1")
    billing = group()
    handled = recording(billing)

    async with running(Worker(billing, nc)):
        await eventually(lambda: handled == ["o-1"])
        await js.delete_consumer(STREAM, "billing")
        await store(js, "o-2")
        # Recreated with deliver policy "all": o-1 comes again (at-least-once), then o-2.
        await eventually(lambda: "o-2" in handled)
    assert handled[0] == "o-1"
    assert (await js.consumer_info(STREAM, "billing")).num_ack_pending == 0


async def test_a_changed_group_updates_its_consumer_and_says_what_changed(
    nc: Client, js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jetgate.consumers")
    for start, settings in enumerate(
        ({}, {}, {"ack_wait": 7.0, "filter_subjects": ["orders.OrderPaid.>"]}), start=1
    ):
        await run_until(Worker(group(**settings), nc), lambda n=start: ready(caplog) == n)
    updates = [r.getMessage() for r in caplog.records if "updating its consumer" in r.getMessage()]
    assert len(updates) == 1  # the identical second start changes nothing
    assert "ack_wait: 5s -> 7s" in updates[0]
    assert "filter_subjects: [orders.>] -> [orders.OrderPaid.>]" in updates[0]
    info = await js.consumer_info(STREAM, "billing")
    assert (info.config.ack_wait, info.config.filter_subjects) == (7.0, ["orders.OrderPaid.>"])


def ready(caplog: pytest.LogCaptureFixture) -> int:
    return sum("consumer ready" in r.getMessage() for r in caplog.records)
