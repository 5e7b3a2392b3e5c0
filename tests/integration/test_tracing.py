"""One trace per event (docs/design.md section 9), through a real gateway, real workers and a real
nats-server, recorded by in-memory exporters: client -> gateway server span -> PRODUCER
`publish <subject>` -> CONSUMER `process <subject>` in each group -> the follow-ups."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import grpc
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from opentelemetry import baggage, context, trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id

from consumers import ConsumerGroup, Delivery, Reject, Worker, deadletter, demo
from gateway.config import GatewayConfig
from gateway.server import Gateway
from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc
from observability import semconv as sc
from observability.logs import TraceContextFilter
from tests.integration.conftest import request, serving
from tests.support.eventually import eventually

WAIT = 20.0  # s
Stub = gateway_pb2_grpc.EventGatewayStub
PUBLISH = "/jetgate.v1.EventGateway/Publish"
PUBLISH_STREAM = "/jetgate.v1.EventGateway/PublishStream"

# Handler code (the demo's gRPC client) uses OpenTelemetry's global provider, as
# `jetgate consume` sets it; it can be set once per process, so this one lives for the session.
HANDLER_SPANS = InMemorySpanExporter()
_handler_provider = TracerProvider(resource=Resource.create({"service.name": "handlers"}))
_handler_provider.add_span_processor(SimpleSpanProcessor(HANDLER_SPANS))


class Spans:
    """Providers per service, all recording into one exporter (plus the handlers' spans)."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()

    def provider(self, service: str) -> TracerProvider:
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        return provider

    def all(self) -> list[ReadableSpan]:
        return [*self.exporter.get_finished_spans(), *HANDLER_SPANS.get_finished_spans()]

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.all() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, f"{len(found)} spans named {name!r}: {self.names()}"
        return found[0]

    def names(self) -> list[str]:
        return sorted(s.name for s in self.all())

    async def until(self, ready: Callable[[], bool]) -> None:
        await eventually(ready, within=WAIT, what="spans")


@pytest.fixture
def spans() -> Spans:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(_handler_provider)
    assert trace.get_tracer_provider() is _handler_provider
    HANDLER_SPANS.clear()
    return Spans()


@pytest.fixture
async def traced_gateway(gateway_config: GatewayConfig, spans: Spans) -> AsyncIterator[Gateway]:
    provider = spans.provider("jetgate-gateway")
    async with serving(gateway_config, tracer_provider=provider) as server:
        yield server


@contextlib.asynccontextmanager
async def client(address: str, provider: TracerProvider | None) -> AsyncIterator[Stub]:
    interceptors = aio_client_interceptors(tracer_provider=provider) if provider else None
    async with grpc.aio.insecure_channel(address, interceptors=interceptors) as channel:
        yield gateway_pb2_grpc.EventGatewayStub(channel)


@contextlib.asynccontextmanager
async def workers(
    nc: Client, *pairs: tuple[ConsumerGroup, TracerProvider | None]
) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(Worker(g, nc, tracer_provider=p, pull_expires=0.5).run(stop))
        for g, p in pairs
    ]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def service(span: ReadableSpan) -> object:
    return span.resource.attributes.get("service.name")


async def stored(nc: Client, subject: str) -> bool:
    try:
        await nc.jetstream().get_last_msg("ORDERS", subject)
    except NotFoundError:
        return False
    return True


async def until_stored(nc: Client, subject: str) -> None:
    await eventually(lambda: stored(nc, subject), within=WAIT, what=f"stored on {subject}")


def assert_publish(span: ReadableSpan, subject: str, parent: ReadableSpan) -> None:
    assert span.kind is SpanKind.PRODUCER
    assert parent_of(span) == span_id(parent)
    attributes = span.attributes or {}
    assert attributes[sc.MESSAGING_SYSTEM] == "nats"
    assert attributes[sc.MESSAGING_OPERATION_TYPE] == "send"
    assert attributes[sc.MESSAGING_OPERATION_NAME] == "publish"
    assert attributes[sc.MESSAGING_DESTINATION_NAME] == subject
    assert attributes[sc.NATS_STREAM] == "ORDERS"
    assert isinstance(attributes[sc.NATS_SEQUENCE], int)
    assert attributes[sc.NATS_SEQUENCE] > 0
    assert attributes[sc.EVENT_KEY] == subject.rsplit(".", 1)[1]
    assert str(attributes[sc.EVENT_TYPE]).startswith("jetgate.examples.orders.v1.")
    assert attributes[sc.MESSAGING_MESSAGE_ID]
    assert isinstance(attributes[sc.MESSAGING_MESSAGE_BODY_SIZE], int)
    assert attributes[sc.SERVER_ADDRESS] == "127.0.0.1"
    assert isinstance(attributes[sc.SERVER_PORT], int)


def assert_process(span: ReadableSpan, group: str, producer: ReadableSpan, attempt: int) -> None:
    assert span.kind is SpanKind.CONSUMER
    assert service(span) == group
    assert parent_of(span) == span_id(producer)
    assert [link.context.span_id for link in span.links] == [span_id(producer)]
    attributes = span.attributes or {}
    sent = producer.attributes or {}
    assert attributes[sc.MESSAGING_SYSTEM] == "nats"
    assert attributes[sc.MESSAGING_OPERATION_TYPE] == "process"
    assert attributes[sc.MESSAGING_CONSUMER_GROUP_NAME] == group
    assert attributes[sc.MESSAGING_DESTINATION_NAME] == sent[sc.MESSAGING_DESTINATION_NAME]
    assert attributes[sc.MESSAGING_MESSAGE_ID] == sent[sc.MESSAGING_MESSAGE_ID]
    assert attributes[sc.NATS_SEQUENCE] == sent[sc.NATS_SEQUENCE]
    assert attributes[sc.NATS_STREAM] == "ORDERS"
    assert attributes[sc.NATS_DELIVERY_COUNT] == attempt
    assert attributes[sc.EVENT_TYPE] == sent[sc.EVENT_TYPE]
    assert attributes[sc.EVENT_KEY] == sent[sc.EVENT_KEY]
    assert attributes[sc.MESSAGING_MESSAGE_BODY_SIZE] == sent[sc.MESSAGING_MESSAGE_BODY_SIZE]
    assert attributes[sc.SERVER_ADDRESS] == "127.0.0.1"


async def test_one_publish_is_one_trace_through_the_demo_pipeline(
    traced_gateway: Gateway, nc: Client, spans: Spans, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JETGATE_GATEWAY", traced_gateway.address)
    key = "o-trace"
    placed, paid, shipped = (
        f"orders.{t}.{key}" for t in ("OrderPlaced", "OrderPaid", "OrderShipped")
    )
    async with (
        workers(
            nc,
            (demo.billing, spans.provider("billing")),
            (demo.shipping, spans.provider("shipping")),
        ),
        client(traced_gateway.address, spans.provider("client")) as stub,
    ):
        await stub.Publish(request(key))
        await until_stored(nc, f"orders.OrderShipped.{key}")
        await spans.until(lambda: len(spans.named(f"process {paid}")) == 1)

    # The workers' PublishStream calls (jetgate.client) are their own long-lived traces:
    # each follow-up's trace context travels with the event, not with the call.
    everything = [s for s in spans.all() if s.name != PUBLISH_STREAM]
    assert len({s.context.trace_id for s in everything if s.context}) == 1, spans.names()

    client_span = next(s for s in everything if service(s) == "client")
    assert client_span.kind is SpanKind.CLIENT
    assert client_span.parent is None
    servers = [s for s in everything if s.kind is SpanKind.SERVER]
    assert [s.name for s in servers] == [PUBLISH]
    assert service(servers[0]) == "jetgate-gateway"
    assert parent_of(servers[0]) == span_id(client_span)
    # Each hop: the gateway's producer span -> the group's process span, whose handler
    # publishes the follow-up through jetgate.client: its producer span is the process
    # span's child (the event's own trace context, though it shared a batch).
    parent = servers[0]
    for subject, group in ((placed, "billing"), (paid, "shipping")):
        producer = spans.one(f"publish {subject}")
        assert_publish(producer, subject, parent)
        process = spans.one(f"process {subject}")
        assert_process(process, group, producer, attempt=1)
        parent = process
    assert_publish(spans.one(f"publish {shipped}"), shipped, parent)
    assert all(s.status.status_code is not StatusCode.ERROR for s in everything)


def flaky_group(failures: dict[str, int]) -> ConsumerGroup:
    """Fails each key's first `failures[key]` attempts; key `o-reject` is rejected."""
    group = ConsumerGroup(
        "flaky", stream="ORDERS", filter_subjects=["orders.OrderPlaced.>"], backoff=[0.1]
    )

    @group.handler(orders_pb2.OrderPlaced)
    async def handle(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        if delivery.key == "o-reject":
            raise Reject("refused on purpose")
        if delivery.attempt <= failures.get(delivery.key, 0):
            raise RuntimeError(f"attempt {delivery.attempt} fails")

    return group


async def test_a_redelivery_is_a_second_process_span_in_the_same_trace(
    traced_gateway: Gateway, nc: Client, spans: Spans, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(TraceContextFilter())  # what configure_logging's handler has
    subject = "orders.OrderPlaced.o-retry"
    async with (
        workers(nc, (flaky_group({"o-retry": 1}), spans.provider("flaky"))),
        client(traced_gateway.address, spans.provider("client")) as stub,
    ):
        await stub.Publish(request("o-retry"))
        await spans.until(lambda: len(spans.named(f"process {subject}")) == 2)

    producer = spans.one(f"publish {subject}")
    first, second = sorted(spans.named(f"process {subject}"), key=lambda s: s.start_time or 0)
    assert_process(first, "flaky", producer, attempt=1)
    assert_process(second, "flaky", producer, attempt=2)
    assert first.context
    assert second.context
    assert producer.context
    assert first.context.trace_id == second.context.trace_id == producer.context.trace_id
    assert first.status.status_code is StatusCode.ERROR
    assert [e.name for e in first.events] == ["exception"]
    assert (first.events[0].attributes or {})["exception.message"] == "attempt 1 fails"
    assert (first.attributes or {})[sc.OUTCOME] == "retry"
    assert second.status.status_code is StatusCode.UNSET
    assert (second.attributes or {})[sc.OUTCOME] == "ack"
    # The worker's log line about the failure names the trace and the failed attempt's span.
    (failed,) = (r for r in caplog.records if "attempt 1 failed" in r.getMessage())
    assert failed.trace_id == format_trace_id(first.context.trace_id)
    assert failed.span_id == format_span_id(first.context.span_id)


async def test_dead_lettering_is_a_span_event(
    traced_gateway: Gateway, nc: Client, spans: Spans
) -> None:
    subject = "orders.OrderPlaced.o-reject"
    async with (
        workers(nc, (flaky_group({}), spans.provider("flaky"))),
        client(traced_gateway.address, None) as stub,
    ):
        await stub.Publish(request("o-reject"))
        await spans.until(lambda: len(spans.named(f"process {subject}")) == 1)

    span = spans.one(f"process {subject}")
    assert span.status.status_code is StatusCode.ERROR
    (event,) = (e for e in span.events if e.name == sc.DEAD_LETTER_EVENT)
    attributes = event.attributes or {}
    assert attributes[sc.DEAD_LETTER_REASON] == "reject"
    assert attributes[sc.DEAD_LETTER_SUBJECT] == wire.dead_letter_subject("flaky", subject)
    assert attributes["exception.message"] == "refused on purpose"
    # No client context: the gateway's server span starts the trace.
    server = next(s for s in spans.all() if s.kind is SpanKind.SERVER)
    assert server.parent is None
    assert parent_of(spans.one(f"publish {subject}")) == span_id(server)


def recording_group(seen: list[tuple[str, object]], name: str = "recorder") -> ConsumerGroup:
    group = ConsumerGroup(name, stream="ORDERS", filter_subjects=["orders.OrderPlaced.>"])

    @group.handler(orders_pb2.OrderPlaced)
    async def handle(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        seen.append((delivery.key, baggage.get_baggage("tenant")))

    return group


Call = Callable[[Stub, Sequence[str]], Awaitable[None]]


async def publish_batch(stub: Stub, keys: Sequence[str]) -> None:
    entries = [request(k) for k in keys]
    response = await stub.PublishBatch(gateway_pb2.PublishBatchRequest(entries=entries))
    assert all(r.HasField("ok") for r in response.results)


async def publish_stream(stub: Stub, keys: Sequence[str]) -> None:
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    requests = [
        gateway_pb2.PublishBatchRequest(entries=[request(k) for k in half]) for half in halves
    ]
    async for response in stub.PublishStream(iter(requests)):
        assert all(r.HasField("ok") for r in response.results)


@pytest.mark.parametrize("call", [publish_batch, publish_stream], ids=["batch", "stream"])
async def test_batches_make_one_producer_span_per_event_with_baggage(
    traced_gateway: Gateway, nc: Client, spans: Spans, call: Call
) -> None:
    keys = [f"o-b{i}" for i in range(4)]
    seen: list[tuple[str, object]] = []
    async with (
        workers(nc, (recording_group(seen), spans.provider("recorder"))),
        client(traced_gateway.address, spans.provider("client")) as stub,
    ):
        token = context.attach(baggage.set_baggage("tenant", "t-1"))
        try:
            await call(stub, keys)
        finally:
            context.detach(token)
        await spans.until(lambda: len(seen) == len(keys))

    (server,) = (s for s in spans.all() if s.kind is SpanKind.SERVER)
    for key in keys:
        subject = f"orders.OrderPlaced.{key}"
        producer = spans.one(f"publish {subject}")
        assert_publish(producer, subject, server)
        assert_process(spans.one(f"process {subject}"), "recorder", producer, attempt=1)
    assert sorted(seen) == [(k, "t-1") for k in keys]
    stored_headers = (
        await nc.jetstream().get_last_msg("ORDERS", "orders.OrderPlaced.o-b0")
    ).headers
    assert stored_headers
    assert stored_headers["baggage"] == "tenant=t-1"


async def test_with_tracing_off_the_gateway_passes_the_clients_context_on(
    gateway: Gateway, nc: Client, spans: Spans
) -> None:
    subject = "orders.OrderPlaced.o-pass"
    seen: list[tuple[str, object]] = []
    async with (
        workers(nc, (recording_group(seen), spans.provider("recorder"))),
        client(gateway.address, spans.provider("client")) as stub,
    ):
        await stub.Publish(request("o-pass"))
        await spans.until(lambda: len(spans.named(f"process {subject}")) == 1)

    client_span = next(s for s in spans.all() if s.kind is SpanKind.CLIENT)
    process = spans.one(f"process {subject}")
    assert not [s for s in spans.all() if s.kind in (SpanKind.SERVER, SpanKind.PRODUCER)]
    assert parent_of(process) == span_id(client_span)


async def test_a_refused_publish_ends_its_producer_span_with_the_error(
    traced_gateway: Gateway, spans: Spans
) -> None:
    stale = event_pb2.Precondition(expected_last_subject_sequence=7)
    async with client(traced_gateway.address, None) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Publish(request("o-stale", precondition=stale))
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION

    producer = spans.one("publish orders.OrderPlaced.o-stale")
    assert producer.status.status_code is StatusCode.ERROR
    assert (producer.attributes or {})[sc.ERROR_TYPE] == "api"
    assert sc.NATS_SEQUENCE not in (producer.attributes or {})
    # The server span records the code; a client's mistake is not a server error (semconv).
    # An abort sends the status before the handler unwinds: the span may end a bit later.
    await spans.until(lambda: any(s.kind is SpanKind.SERVER for s in spans.all()))
    (server,) = (s for s in spans.all() if s.kind is SpanKind.SERVER)
    code = grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert (server.attributes or {})["rpc.grpc.status_code"] == code


async def test_an_unsampled_call_records_nothing_and_passes_the_decision_on(
    traced_gateway: Gateway, nc: Client, spans: Spans
) -> None:
    # The client traces but samples nothing: its traceparent says "not sampled".
    unsampled = TracerProvider(sampler=ALWAYS_OFF)
    seen: list[tuple[str, object]] = []
    async with (
        workers(nc, (recording_group(seen), spans.provider("recorder"))),
        client(traced_gateway.address, unsampled) as stub,
    ):
        await stub.PublishBatch(
            gateway_pb2.PublishBatchRequest(entries=[request("o-u1"), request("o-u2")])
        )
        await spans.until(lambda: len(seen) == 2)

    assert spans.all() == []  # gateway and worker follow the parent: nothing recorded
    stored_headers = (
        await nc.jetstream().get_last_msg("ORDERS", "orders.OrderPlaced.o-u2")
    ).headers
    assert stored_headers
    version, trace_id, _, flags = stored_headers["traceparent"].split("-")
    assert version == "00"
    assert int(trace_id, 16) != 0
    assert not int(flags, 16) & 0x01  # sampled flag off (0x02, "random trace id", may be on)


async def test_a_redriven_dead_letter_continues_the_events_trace(
    traced_gateway: Gateway, nc: Client, spans: Spans
) -> None:
    subject = "orders.OrderPlaced.o-reject"
    async with client(traced_gateway.address, None) as stub:
        async with workers(nc, (flaky_group({}), spans.provider("flaky"))):
            await stub.Publish(request("o-reject"))
            await spans.until(lambda: len(spans.named(f"process {subject}")) == 1)
        # The dead letter keeps the event's headers, trace context included; once the handler
        # is fixed (here: a group of the same name that accepts it), redrive hands it back.
        (redriven,) = await deadletter.redrive(nc.jetstream(), "flaky")
        assert redriven.origin_subject == subject
        seen: list[tuple[str, object]] = []
        fixed = recording_group(seen, name="flaky")
        async with workers(nc, (fixed, spans.provider("flaky"))):
            await spans.until(lambda: len(seen) == 1)

    producer = spans.one(f"publish {subject}")
    first, second = sorted(spans.named(f"process {subject}"), key=lambda s: s.start_time or 0)
    assert (first.attributes or {})[sc.OUTCOME] == "dead_letter"
    assert (second.attributes or {})[sc.OUTCOME] == "ack"
    assert parent_of(first) == parent_of(second) == span_id(producer)


async def test_trace_headers_that_would_exceed_the_size_limit_are_left_out(
    gateway_config: GatewayConfig, nc: Client, spans: Spans, caplog: pytest.LogCaptureFixture
) -> None:
    # Validation checks the event's size without trace headers; a client's huge baggage must
    # not push the message over the limit (nats-server would close the connection).
    streams = tuple(
        dataclasses.replace(s, max_msg_size=4096) if s.name == "ORDERS" else s
        for s in gateway_config.streams
    )
    config = dataclasses.replace(gateway_config, streams=streams)
    provider = spans.provider("jetgate-gateway")
    async with (
        serving(config, tracer_provider=provider) as server,
        client(server.address, spans.provider("client")) as stub,
    ):
        token = context.attach(baggage.set_baggage("blob", "x" * 4000))
        try:
            big = await stub.Publish(request("o-big"))
        finally:
            context.detach(token)
        small = await stub.Publish(request("o-small"))

    big_headers = (await nc.jetstream().get_msg("ORDERS", big.sequence)).headers or {}
    small_headers = (await nc.jetstream().get_msg("ORDERS", small.sequence)).headers or {}
    assert not set(big_headers) & {"traceparent", "baggage"}, big_headers
    assert "traceparent" in small_headers
    assert f"event {big.event_id}: trace headers left out" in caplog.text
