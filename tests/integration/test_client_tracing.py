"""Trace context per event through jetgate.client: events of different traces share a
PublishStream message, and each is stored in its caller's trace."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from nats.aio.client import Client as NATS
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_trace_id

from gateway.config import GatewayConfig
from jetgate.client import Client, Published
from jetgate.v1 import gateway_pb2_grpc
from tests.integration.conftest import (
    field_violations,
    order_placed,
    request,
    rich_status,
    serving,
)
from tests.support.eventually import eventually


def recording() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def publish_in_spans(
    client: Client, provider: TracerProvider
) -> list[tuple[int, int, Published]]:
    """Three callers, each in a span of its own trace: (trace id, span id, result) each."""
    tracer = provider.get_tracer("test")

    async def caller(key: str) -> tuple[int, int, Published]:
        with tracer.start_as_current_span(f"handle {key}") as span:
            result = await client.publish(order_placed(key), key=key)
            context = span.get_span_context()
            return context.trace_id, context.span_id, result

    return await asyncio.gather(*(caller(f"o-{i}") for i in range(3)))


async def stored_traceparent(nats_url: str, subject: str) -> str:
    nc = NATS()
    await nc.connect(nats_url)
    try:
        message = await nc.jetstream().get_last_msg("ORDERS", subject)
    finally:
        await nc.close()
    value = (message.headers or {})["traceparent"]
    assert isinstance(value, str)
    return value


async def test_each_event_gets_its_callers_trace_in_a_shared_batch(
    gateway_config: GatewayConfig, nats_url: str
) -> None:
    gateway_provider, gateway_spans = recording()
    callers, _ = recording()
    async with (
        serving(gateway_config, tracer_provider=gateway_provider) as gateway,
        Client(gateway.address) as client,
    ):
        published = await publish_in_spans(client, callers)
        assert client.batches_sent == 1

    def producers() -> dict[str, ReadableSpan]:
        return {
            s.name: s for s in gateway_spans.get_finished_spans() if s.kind is SpanKind.PRODUCER
        }

    await eventually(lambda: len(producers()) == 3)
    for trace_id, span_id, result in published:
        producer = producers()[f"publish {result.subject}"]
        assert producer.parent is not None
        assert (producer.parent.trace_id, producer.parent.span_id) == (trace_id, span_id)
        header = await stored_traceparent(nats_url, result.subject)
        assert header.split("-")[1] == format_trace_id(trace_id)
    assert len({trace_id for trace_id, _, _ in published}) == 3


async def test_with_tracing_off_each_event_keeps_its_callers_context(
    gateway_config: GatewayConfig, nats_url: str
) -> None:
    callers, _ = recording()
    async with serving(gateway_config) as gateway, Client(gateway.address) as client:
        published = await publish_in_spans(client, callers)
    for trace_id, _, result in published:
        header = await stored_traceparent(nats_url, result.subject)
        assert header.split("-")[1] == format_trace_id(trace_id)


async def test_an_entrys_trace_context_holds_only_w3c_names(
    stub: gateway_pb2_grpc.EventGatewayAsyncStub,
) -> None:
    entry = request("o-1")
    entry.trace_context.update({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    entry.trace_context["x-other"] = "1"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Publish(entry)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(rich_status(caught.value))) == ["trace_context['x-other']"]
