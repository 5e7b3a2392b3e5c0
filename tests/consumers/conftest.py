"""Consumer-group fixtures: the demo ORDERS stream and a way to store events into it."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
from google.protobuf.message import Message
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from consumers import ConsumerGroup, Delivery, Worker, WorkerStats
from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2
from tests.support.eventually import DEFAULT_WITHIN, eventually

STREAM = "ORDERS"
IN_PROGRESS = b"+WPI"  # the payload of an in_progress acknowledgement


@pytest.fixture
async def js(nc: Client) -> JetStreamContext:
    context = nc.jetstream()
    await context.add_stream(StreamConfig(name=STREAM, subjects=["orders.>"]))
    return context


async def store(
    js: JetStreamContext,
    key: str,
    message: Message | None = None,
    *,
    event_id: str = "",
    payload: bytes | None = None,
    event_type: str = "",
) -> int:
    """Store one event as the gateway would; returns its stream sequence."""
    message = message if message is not None else orders_pb2.OrderPlaced(order_id=key)
    full_type = event_type or message.DESCRIPTOR.full_name
    envelope = wire.Envelope(
        id=event_id or wire.new_event_id(),
        type=full_type,
        source="tests",
        key=key,
        time=datetime.now(UTC),
        headers={"tenant": "t-1"},
    )
    ack = await js.publish(
        wire.subject("orders", full_type, key),
        message.SerializeToString() if payload is None else payload,
        headers=wire.encode_headers(envelope),
    )
    return int(ack.seq)


async def run_until(
    worker: Worker, done: Callable[[], bool], within: float = DEFAULT_WITHIN
) -> WorkerStats:
    """Run `worker` until `done()` holds (`eventually`), then drain it."""
    async with running(worker):
        await eventually(done, within=within)
    return worker.stats


@contextlib.asynccontextmanager
async def heartbeats(nc: Client, group: str) -> AsyncIterator[Counter[str]]:
    """Counts, per delivery (its ack subject), the in_progress acknowledgements (`+WPI`)
    that workers of `group` send while the block runs: each one tells nats-server to hold
    the event for another ack_wait, so N of them, ack_wait/2 apart, span N/2 ack_waits."""
    counts: Counter[str] = Counter()

    async def seen(msg: Msg) -> None:
        if msg.data == IN_PROGRESS and f".{STREAM}.{group}." in msg.subject:
            counts[msg.subject] += 1

    sub = await nc.subscribe("$JS.ACK.>", cb=seen)
    try:
        yield counts
    finally:
        await sub.unsubscribe()


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    """`worker` running in a task for the block; stopped and drained (30 s at most) after."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def recording(billing: ConsumerGroup) -> list[str]:
    """Give `billing` an OrderPlaced handler; the list it returns fills with their order ids."""
    handled: list[str] = []

    @billing.handler(orders_pb2.OrderPlaced)
    async def record(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        handled.append(event.order_id)

    return handled


def group(name: str = "billing", **settings: object) -> ConsumerGroup:
    """A test group on ORDERS: all subjects, ack_wait 5 s, one short backoff step."""
    defaults: dict[str, object] = {
        "stream": STREAM,
        "filter_subjects": ["orders.>"],
        "ack_wait": 5.0,
        "backoff": (0.2,),
    }
    defaults.update(settings)
    return ConsumerGroup(name, **defaults)  # type: ignore[arg-type]
