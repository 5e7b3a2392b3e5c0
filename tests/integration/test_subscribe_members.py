"""Subscribe members in their group: credits, sharing events with a Python worker, handing
deliveries back when a stream ends, and the trace each delivery continues."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from consumers import ConsumerGroup, Delivery, Worker
from gateway.config import GatewayConfig
from gateway.server import Gateway
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc
from observability import semconv as sc
from tests.integration.conftest import request, serving
from tests.integration.subscriber import GROUP, Subscriber, subscribed, with_group
from tests.support.eventually import eventually

Stub: TypeAlias = "gateway_pb2_grpc.EventGatewayAsyncStub"
ACK_WAIT = 60.0  # s: far beyond every wait below, so no event comes back by ack_wait


@pytest.fixture
async def gateway(gateway_config: GatewayConfig) -> AsyncIterator[Gateway]:
    async with serving(with_group(gateway_config, ack_wait=ACK_WAIT)) as server:
        yield server


async def publish(stub: Stub, count: int, prefix: str = "o") -> set[str]:
    responses = await asyncio.gather(
        *(stub.Publish(request(f"{prefix}-{i}")) for i in range(count))
    )
    return {r.event_id for r in responses}


async def _pending(js: JetStreamContext) -> tuple[int, int]:
    info = await js.consumer_info("ORDERS", GROUP)
    return int(info.num_pending), int(info.num_ack_pending)


@contextlib.asynccontextmanager
async def python_worker(
    nc: Client, seen: list[str], *, concurrency: int = 4
) -> AsyncIterator[Worker]:
    """A Python worker of the declared group (same settings), recording the event ids."""
    group = ConsumerGroup(GROUP, stream="ORDERS", ack_wait=ACK_WAIT)

    @group.handler(orders_pb2.OrderPlaced)
    async def record(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        seen.append(delivery.event_id)

    worker = Worker(group, nc, concurrency=concurrency, prefetch=0)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await eventually(worker.ready.wait)
        yield worker
    finally:
        stop.set()
        await running


async def test_credits_bound_the_unsettled_deliveries(stub: Stub, nc: Client) -> None:
    js = nc.jetstream()
    async with subscribed(stub, max_in_flight=2) as client:
        await eventually(lambda: client.subscribed is not None)
        ids = await publish(stub, 6)
        # The gateway holds 2 more (prefetch = min(credits, 64)) but sends only 2.
        await eventually(lambda: _held(js, (2, 4)))
        assert len(client.deliveries) == 2
        client.settle(client.deliveries[0].ack_id)
        await eventually(lambda: len(client.deliveries) == 3)
        client.send(gateway_pb2.SubscribeRequest(add_credits=2))
        await eventually(lambda: len(client.deliveries) == 5)
        client.settle(*(d.ack_id for d in client.deliveries[1:]))
        await eventually(lambda: len(client.deliveries) == 6)
        client.settle(client.deliveries[5].ack_id)
        assert {d.event.id for d in client.deliveries} == ids
        assert client.most_unsettled == 4


async def _held(js: JetStreamContext, wanted: tuple[int, int]) -> bool:
    return await _pending(js) == wanted


async def test_a_subscriber_and_a_python_worker_split_the_events(stub: Stub, nc: Client) -> None:
    seen: list[str] = []
    async with python_worker(nc, seen), subscribed(stub, max_in_flight=32) as client:
        await eventually(lambda: client.subscribed is not None)

        def ack_all() -> None:
            client.settle(*(d.ack_id for d in client.deliveries if d.ack_id not in client.settled))

        ids = await publish(stub, 200)
        remote: list[str] = []

        def all_handled() -> bool:
            ack_all()
            remote[:] = [d.event.id for d in client.deliveries]
            return len(remote) + len(seen) >= len(ids)

        await eventually(all_handled)
        await eventually(lambda: len(client.results) == len(client.deliveries))
    assert sorted(remote + seen) == sorted(ids)  # each exactly once, none missing
    assert remote
    assert seen


async def test_a_cancelled_stream_hands_its_deliveries_back_at_once(stub: Stub, nc: Client) -> None:
    leaving = Subscriber(stub, max_in_flight=5)
    ids = await publish(stub, 5)
    await eventually(lambda: len(leaving.deliveries) == 5)
    await leaving.close()  # unsettled: handed back, not held until ack_wait (60 s)
    seen: list[str] = []
    async with python_worker(nc, seen):
        await eventually(lambda: sorted(seen) == sorted(ids), within=ACK_WAIT / 3)


async def test_a_stopping_gateway_hands_deliveries_back(
    gateway_config: GatewayConfig, nc: Client
) -> None:
    config = with_group(gateway_config, ack_wait=ACK_WAIT)
    async with serving(config) as server, grpc.aio.insecure_channel(server.address) as channel:
        stub: Stub = gateway_pb2_grpc.EventGatewayStub(channel)
        client = Subscriber(stub, max_in_flight=3)
        ids = await publish(stub, 3)
        await eventually(lambda: len(client.deliveries) == 3)
        await server.stop(grace=1.0)
        error = await eventually(client.failure)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    seen: list[str] = []
    async with python_worker(nc, seen):
        await eventually(lambda: sorted(seen) == sorted(ids), within=ACK_WAIT / 3)


async def test_each_delivery_continues_the_event_trace(
    gateway_config: GatewayConfig,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = with_group(gateway_config, ack_wait=ACK_WAIT)
    async with (
        serving(config, tracer_provider=provider) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub: Stub = gateway_pb2_grpc.EventGatewayStub(channel)
        async with subscribed(stub) as client:
            [event_id] = await publish(stub, 1)
            delivery = await eventually(lambda: client.delivery(0))
            client.settle(delivery.ack_id)
            await eventually(lambda: client.result(delivery.ack_id))
        spans = exporter.get_finished_spans()
    producer = next(s for s in spans if s.kind == SpanKind.PRODUCER)
    consumer = next(s for s in spans if s.kind == SpanKind.CONSUMER)
    assert consumer.attributes is not None
    assert consumer.attributes[sc.MESSAGING_CONSUMER_GROUP_NAME] == GROUP
    assert consumer.attributes[sc.MESSAGING_MESSAGE_ID] == event_id
    _, trace_id, span_id, _flags = delivery.trace_context["traceparent"].split("-")
    assert producer.context is not None
    assert consumer.context is not None
    assert int(trace_id, 16) == producer.context.trace_id == consumer.context.trace_id
    assert int(span_id, 16) == consumer.context.span_id
