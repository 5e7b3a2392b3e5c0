"""No event vanishes while the DLQ stream is unavailable (issue 18, defect 3).

Before: each failed dead-letter store ended in a nak, so with max_deliver 2 the event ran
out of deliveries and JetStream stopped delivering it: neither handled nor dead-lettered.
Now the worker holds the event and retries the store until it succeeds.
"""

from __future__ import annotations

import logging

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from consumers import ConsumerGroup, Delivery, Reject, Worker, deadletter
from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2
from tests.consumers.conftest import STREAM, group, running, store
from tests.support.eventually import eventually


def rejecting() -> tuple[ConsumerGroup, list[int]]:
    billing = group(max_deliver=2, backoff=(0.1,), ack_wait=2.0)
    attempts: list[int] = []

    @billing.handler(orders_pb2.OrderPlaced)
    async def refuse(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        raise Reject("refused")

    return billing, attempts


def not_stored(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "not stored" in r.getMessage()]


def failures(reader: InMemoryMetricReader) -> int:
    data = reader.get_metrics_data()
    total = 0
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "jetgate.consumer.dead_letter_failures":
                    total += sum(int(p.value) for p in metric.data.data_points)  # type: ignore[union-attr]
    return total


async def test_a_deleted_dlq_stream_is_created_again_and_the_dead_letter_stored(
    nc: Client, js: JetStreamContext
) -> None:
    billing, attempts = rejecting()
    worker = Worker(billing, nc)
    async with running(worker):
        await eventually(lambda: worker.ready.is_set())
        await js.delete_stream(wire.DEAD_LETTER_STREAM)
        sequence = await store(js, "o-1", event_id="e-1")
        await eventually(lambda: worker.stats.dead_lettered == 1)

    [dead] = [d async for d in deadletter.dead_letters(js, "billing")]
    assert (dead.event_id, dead.origin_sequence, dead.reason) == ("e-1", sequence, "reject")
    assert attempts == [1]
    info = await js.consumer_info(STREAM, "billing")
    assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)


async def test_the_event_is_held_while_its_dead_letter_cannot_be_stored(
    nc: Client, js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jetgate.consumers")
    billing, attempts = rejecting()
    reader = InMemoryMetricReader()
    worker = Worker(billing, nc, meter_provider=MeterProvider(metric_readers=[reader]))
    async with running(worker):
        await eventually(lambda: worker.ready.is_set())
        # A DLQ stream that takes no dead letter (no subject of its own): it exists, so the
        # worker cannot repair it; an operator has to.
        await js.update_stream(StreamConfig(name=wire.DEAD_LETTER_STREAM, subjects=["elsewhere.>"]))
        sequence = await store(js, "o-1", event_id="e-1")
        # Four failed stores: more than one delivery's worth before the fix (three tries,
        # then a nak that used up a delivery).
        await eventually(lambda: len(not_stored(caplog)) >= 4, what="four failed stores")
        # Held, not given up: delivered once, unacknowledged, kept alive past ack_wait.
        info = await js.consumer_info(STREAM, "billing")
        assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (1, 0, 0)
        assert (info.delivered.stream_seq, attempts) == (sequence, [1])
        assert worker.stats.dead_lettered == 0
        assert failures(reader) >= 4  # the alert: jetgate.consumer.dead_letter_failures

        await js.update_stream(
            StreamConfig(name=wire.DEAD_LETTER_STREAM, subjects=[f"{wire.DEAD_LETTER_PREFIX}.>"])
        )
        await eventually(lambda: worker.stats.dead_lettered == 1)

    [dead] = [d async for d in deadletter.dead_letters(js, "billing")]
    assert (dead.event_id, dead.origin_sequence) == ("e-1", sequence)
    assert attempts == [1]
    info = await js.consumer_info(STREAM, "billing")
    assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)
