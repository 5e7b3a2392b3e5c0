"""Interop with Jaeger v2: one OrderPlaced sent through `jetgate up` (gateway, billing and
shipping workers) is one trace in Jaeger, from the client's call to the last publish.

What Jaeger shows of a process span (parent = the producer span, plus a link to it): its
v1 JSON API (`/api/traces`, what the UI reads) has ONE reference to the producer span, of
type FOLLOWS_FROM: the OTel->Jaeger translation turns a parent that is also linked into a
single reference with the link's type (FOLLOWS_FROM, the link having no
`opentracing.ref_type` attribute). The v3 API (`/api/v3/traces/ID`, OTLP JSON) keeps both
the parent span id and the link, as sent. The first test checks this on Jaeger alone.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from jetgate.v1 import gateway_pb2_grpc
from tests.integration.conftest import request
from tests.integration.jetgate_up import WAIT, alive, read_banner, read_rest, start_up
from tests.interop.jaeger import Jaeger, jaeger_fixture  # noqa: F401
from tests.support.eventually import eventually

pytestmark = pytest.mark.interop

PUBLISH = "/jetgate.v1.EventGateway/Publish"
GATEWAY = "jetgate-gateway"
CLIENT = "interop-client"
Span = dict[str, Any]  # one span of Jaeger's v1 JSON, plus "service"


# --- Jaeger on its own -------------------------------------------------------------------


def _provider(service: str, exporter: Any) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


async def test_jaeger_stores_otlp_spans_on_loopback_only(jaeger: Jaeger) -> None:
    assert _listeners(jaeger.pid) == {"127.0.0.1"}, _listeners(jaeger.pid)
    via_grpc = _provider("probe-grpc", GrpcExporter(endpoint=jaeger.otlp_grpc_endpoint))
    via_http = _provider("probe-http", HttpExporter(f"{jaeger.otlp_http_endpoint}/v1/traces"))
    try:
        tracer = via_grpc.get_tracer("probe")
        with tracer.start_as_current_span("publish x", kind=trace.SpanKind.PRODUCER) as producer:
            pass
        parent = trace.set_span_in_context(producer)
        producer_context = producer.get_span_context()
        with tracer.start_as_current_span(
            "process x",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            links=[trace.Link(producer_context)],
        ):
            pass
        with tracer.start_as_current_span("child x", context=parent):
            pass
        with via_http.get_tracer("probe").start_as_current_span("over http"):
            pass
    finally:
        via_grpc.shutdown()
        via_http.shutdown()

    trace_id = f"{producer_context.trace_id:032x}"
    producer_id = f"{producer_context.span_id:016x}"
    found = await _poll(lambda: _trace_with(jaeger, "probe-grpc", {"process x", "child x"}))
    assert found["traceID"] == trace_id
    spans = {span["operationName"]: span for span in found["spans"]}
    assert spans["publish x"]["references"] == []
    assert spans["child x"]["references"] == [
        {"refType": "CHILD_OF", "traceID": trace_id, "spanID": producer_id}
    ]
    # Parent and link to the same span: one FOLLOWS_FROM reference in the v1 API ...
    assert spans["process x"]["references"] == [
        {"refType": "FOLLOWS_FROM", "traceID": trace_id, "spanID": producer_id}
    ]
    # ... both, as sent, in the v3 API.
    process = _otlp_spans(jaeger, trace_id)["process x"]
    assert process["parentSpanId"] == producer_id
    assert [(link["traceId"], link["spanId"]) for link in process["links"]] == [
        (trace_id, producer_id)
    ]
    assert await _poll(lambda: _trace_with(jaeger, "probe-http", {"over http"}))
    assert {"probe-grpc", "probe-http"} <= set(jaeger.services())


# --- the demo pipeline -------------------------------------------------------------------


async def test_one_event_is_one_trace_across_gateway_and_workers(
    jaeger: Jaeger, tmp_path: Path
) -> None:
    key = "o-7"
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_grpc_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    proc = await start_up(tmp_path, env)
    assert proc.stdout is not None
    rest: asyncio.Task[str] | None = None
    client_spans = InMemorySpanExporter()
    client = TracerProvider(resource=Resource.create({SERVICE_NAME: CLIENT}))
    client.add_span_processor(SimpleSpanProcessor(client_spans))
    client.add_span_processor(
        BatchSpanProcessor(
            GrpcExporter(endpoint=jaeger.otlp_grpc_endpoint), schedule_delay_millis=200
        )
    )
    banner = ""
    try:
        banner = await read_banner(proc.stdout)
        rest = asyncio.create_task(read_rest(proc.stdout))
        address = re.search(r"listening on (127\.0\.0\.1:\d+)", banner)
        nats_url = re.search(r"NATS: (nats://127\.0\.0\.1:\d+) \(embedded, pid (\d+)", banner)
        workers = re.findall(r"consumers\.demo:\w+  pid (\d+)", banner)
        assert address, banner
        assert nats_url, banner
        assert len(workers) == 2, banner
        assert "Tracing: on" in banner, banner

        interceptors = aio_client_interceptors(tracer_provider=client)  # type: ignore[no-untyped-call]
        async with grpc.aio.insecure_channel(address.group(1), interceptors=interceptors) as ch:
            reply = await gateway_pb2_grpc.EventGatewayStub(ch).Publish(request(key), timeout=10)
        assert reply.subject == f"orders.OrderPlaced.{key}"
        assert await asyncio.to_thread(client.force_flush, 10_000)
        [client_span] = client_spans.get_finished_spans()
        trace_id = f"{client_span.context.trace_id:032x}"

        await _wait_stored(nats_url.group(1), f"orders.OrderShipped.{key}")
        expected = {
            (CLIENT, PUBLISH),
            (GATEWAY, PUBLISH),
            (GATEWAY, f"publish orders.OrderPlaced.{key}"),
            ("billing", f"process orders.OrderPlaced.{key}"),
            (GATEWAY, f"publish orders.OrderPaid.{key}"),
            ("shipping", f"process orders.OrderPaid.{key}"),
            (GATEWAY, f"publish orders.OrderShipped.{key}"),
        }
        found = await _poll(
            lambda: _trace_covering(jaeger, GATEWAY, expected),
            what=f"one trace with {sorted(expected)}",
            seen=lambda: _summary(jaeger),
        )
        assert found["traceID"] == trace_id
        _check_pipeline(jaeger, found, key)
        # Every span of this event, in whichever service's traces, is in that one trace.
        for service in (CLIENT, GATEWAY, "billing", "shipping"):
            for other in await asyncio.to_thread(jaeger.traces, service):
                ours = [
                    s
                    for s in other["spans"]
                    if s["operationName"] == PUBLISH or s["operationName"].endswith(f".{key}")
                ]
                assert not ours or other["traceID"] == trace_id, (service, ours)

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), WAIT) == 0
        for pid in [int(nats_url.group(2)), *map(int, workers)]:
            assert not alive(pid), pid
    finally:
        client.shutdown()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if rest is not None:
            print(banner + await asyncio.wait_for(rest, WAIT))  # shown when the test fails


def _check_pipeline(jaeger: Jaeger, found: dict[str, Any], key: str) -> None:
    """The shape of docs/design.md section 9, hop by hop, in the v1 and the v3 API."""
    spans = _spans(found)
    by_name: dict[tuple[str, str], list[Span]] = {}
    for span in spans.values():
        by_name.setdefault((span["service"], span["operationName"]), []).append(span)

    def one(service: str, operation: str, kind: str) -> Span:
        [span] = by_name[(service, operation)]
        assert _tag(span, "span.kind") == kind, (service, operation, span["tags"])
        return span

    client = one(CLIENT, PUBLISH, "client")
    assert client["references"] == []
    # One Publish call: the follow-ups go through jetgate.client's PublishStream batches
    # (their own long-lived traces); each follow-up carries its handler's context.
    [server] = by_name[(GATEWAY, PUBLISH)]
    assert _tag(server, "span.kind") == "server"
    assert server["references"] == [_ref("CHILD_OF", client)]
    otlp = _otlp_spans_by_id(jaeger, found["traceID"])

    parent = server
    for event, worker in (
        ("OrderPlaced", "billing"),
        ("OrderPaid", "shipping"),
        ("OrderShipped", None),
    ):
        # The producer span is the child of the gateway's server span (the first event) or
        # of the process span whose handler published the follow-up.
        producer = one(GATEWAY, f"publish orders.{event}.{key}", "producer")
        assert producer["references"] == [_ref("CHILD_OF", parent)], event
        if worker is None:
            break
        # The worker's process span: parent and link to the producer span.
        process = one(worker, f"process orders.{event}.{key}", "consumer")
        assert process["references"] == [_ref("FOLLOWS_FROM", producer)], process["references"]
        assert otlp[process["spanID"]].get("parentSpanId") == producer["spanID"]
        links = [(link["traceId"], link["spanId"]) for link in otlp[process["spanID"]]["links"]]
        assert links == [(found["traceID"], producer["spanID"])]
        assert _tag(process, "messaging.system") == "nats"
        assert _tag(process, "messaging.consumer.group.name") == worker
        parent = process


# --- helpers -----------------------------------------------------------------------------


async def _poll(find: Any, *, what: str = "the trace", seen: Any = None) -> Any:
    """`find()` (blocking: run in a thread) until it returns something truthy (`eventually`)."""

    async def check() -> Any:
        return await asyncio.to_thread(find) or False

    try:
        return await eventually(check, within=WAIT, interval=0.25, what=f"Jaeger showing {what}")
    except AssertionError as exc:
        shown = f"\nJaeger has:\n{await asyncio.to_thread(seen)}" if seen is not None else ""
        pytest.fail(f"{exc}{shown}", pytrace=False)


def _summary(jaeger: Jaeger) -> str:
    """Every trace of every service Jaeger knows: trace id, then service: operation lines."""
    traces: dict[str, dict[str, Any]] = {}
    for service in jaeger.services():
        traces.update((t["traceID"], t) for t in jaeger.traces(service, limit=100))
    lines = []
    for trace_id, found in traces.items():
        lines.append(f"trace {trace_id}")
        for span in sorted(_spans(found).values(), key=lambda s: s["startTime"]):
            refs = " ".join(f"{r['refType']}:{r['spanID']}" for r in span["references"])
            lines.append(
                f"  {span['spanID']} {span['service']}: {span['operationName']}"
                f" [{_tag(span, 'span.kind')}] {refs}"
            )
    return "\n".join(lines) or "(nothing)"


def _spans(found: dict[str, Any]) -> dict[str, Span]:
    processes = found["processes"]
    return {
        span["spanID"]: {**span, "service": processes[span["processID"]]["serviceName"]}
        for span in found["spans"]
    }


def _trace_with(jaeger: Jaeger, service: str, operations: set[str]) -> dict[str, Any] | None:
    for found in jaeger.traces(service):
        if operations <= {span["operationName"] for span in found["spans"]}:
            return found
    return None


def _trace_covering(
    jaeger: Jaeger, service: str, expected: set[tuple[str, str]]
) -> dict[str, Any] | None:
    """The trace of `service` holding a span of every (service, operation) in `expected`."""
    for found in jaeger.traces(service):
        seen = {(s["service"], s["operationName"]) for s in _spans(found).values()}
        if expected <= seen:
            return found
    return None


def _otlp_spans_by_id(jaeger: Jaeger, trace_id: str) -> dict[str, dict[str, Any]]:
    return {span["spanId"]: span for span in _otlp_span_list(jaeger, trace_id)}


def _otlp_spans(jaeger: Jaeger, trace_id: str) -> dict[str, dict[str, Any]]:
    return {span["name"]: span for span in _otlp_span_list(jaeger, trace_id)}


def _otlp_span_list(jaeger: Jaeger, trace_id: str) -> Iterator[dict[str, Any]]:
    for resource_spans in jaeger.otlp_trace(trace_id)["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            yield from scope_spans["spans"]


def _parent(span: Span) -> str | None:
    return span["references"][0]["spanID"] if span["references"] else None


def _ancestors(span: Span, spans: dict[str, Span]) -> list[str]:
    chain: list[str] = []
    parent = _parent(span)
    while parent is not None and parent not in chain:
        chain.append(parent)
        parent = _parent(spans[parent]) if parent in spans else None
    return chain


def _ref(kind: str, span: Span) -> dict[str, str]:
    return {"refType": kind, "traceID": span["traceID"], "spanID": span["spanID"]}


def _tag(span: Span, key: str) -> Any:
    return next((tag["value"] for tag in span["tags"] if tag["key"] == key), None)


def _listeners(pid: int) -> set[str]:
    """The local addresses on which process `pid` has listening TCP or bound UDP sockets."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    addresses = set()
    for table, listening in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes and fields[3] == listening:
                addresses.add(_address(fields[1].partition(":")[0]))
    return addresses


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return ".".join(str(b) for b in reversed(raw))
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]  # IPv6: four host-order words
    return str(ipaddress.IPv6Address(b"".join(words)))


async def _wait_stored(nats_url: str, subject: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        await eventually(
            lambda: nc.jetstream().get_last_msg("ORDERS", subject),
            within=WAIT,
            retry_on=(NotFoundError,),
            what=f"stored on {subject}",
        )
    finally:
        await nc.close()
