"""Consumer-group fixtures: the demo ORDERS stream and a way to store events into it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
from google.protobuf.message import Message
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from consumers import ConsumerGroup, Delivery, Worker, WorkerStats
from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2

STREAM = "ORDERS"


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


async def run_until(worker: Worker, done: Callable[[], bool], within: float = 20.0) -> WorkerStats:
    """Run `worker` until `done()` holds (checked every 50 ms), then drain it."""
    async with running(worker):
        await until(done, within)
    return worker.stats


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


async def until(done: Callable[[], bool], within: float = 20.0) -> None:
    """Wait until `done()` holds (checked every 50 ms); AssertionError after `within` s."""
    for _ in range(int(within / 0.05)):
        if done():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {within} s")


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
