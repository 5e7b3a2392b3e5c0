"""Prometheus metrics end to end: gateway and worker in this process, each with its own
/metrics endpoint (observability.configure), against the per-test nats-server."""

from __future__ import annotations

import asyncio
import math
import urllib.request
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from nats.aio.client import Client
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from consumers import Delivery, Reject, Worker
from gateway.config import GatewayConfig
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc
from observability import GATEWAY_SERVICE, Telemetry, configure
from observability.metrics import DURATION_BUCKETS
from tests.consumers.conftest import group, running
from tests.integration.conftest import request, serving
from tests.support.eventually import eventually

ORDER_PLACED = "jetgate.examples.orders.v1.OrderPlaced"
KEYS = ("o-1", "o-2", "o-bad")


@pytest.fixture
async def gateway_telemetry() -> AsyncIterator[Telemetry]:
    telemetry = configure(GATEWAY_SERVICE, metrics_listen="127.0.0.1:0")
    try:
        yield telemetry
    finally:
        telemetry.shutdown()


@pytest.fixture
async def worker_telemetry() -> AsyncIterator[Telemetry]:
    telemetry = configure("billing", metrics_listen="127.0.0.1:0")
    try:
        yield telemetry
    finally:
        telemetry.shutdown()


@pytest.fixture
async def metered_stub(
    gateway_config: GatewayConfig, gateway_telemetry: Telemetry
) -> AsyncIterator[gateway_pb2_grpc.EventGatewayStub]:
    async with (
        serving(gateway_config, meter_provider=gateway_telemetry.meter_provider) as gateway,
        grpc.aio.insecure_channel(gateway.address) as channel,
    ):
        yield gateway_pb2_grpc.EventGatewayStub(channel)


async def _scrape(telemetry: Telemetry) -> tuple[str, list[Sample]]:
    assert telemetry.metrics_server is not None
    url = telemetry.metrics_server.url

    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
            return str(response.read().decode())

    text = await asyncio.to_thread(get)
    return text, [s for f in text_string_to_metric_families(text) for s in f.samples]


def _find(samples: list[Sample], name: str, **labels: str) -> list[Sample]:
    return [s for s in samples if s.name == name and labels.items() <= s.labels.items()]


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    (sample,) = _find(samples, name, **labels)
    return sample.value


async def _scrape_until(telemetry: Telemetry, done: Callable[[list[Sample]], bool]) -> list[Sample]:
    """Scrape until `done(samples)` holds (`eventually`); the samples."""

    async def check() -> list[Sample]:
        _, samples = await _scrape(telemetry)
        assert done(samples), f"metrics not as expected: {samples}"
        return samples

    return await eventually(check, interval=0.1, what="metrics")


def _gauges(lag: float, ack_pending: float) -> Callable[[list[Sample]], bool]:
    def done(samples: list[Sample]) -> bool:
        lags = _find(samples, "jetgate_consumer_lag")
        pending = _find(samples, "jetgate_consumer_ack_pending")
        return [s.value for s in lags] == [lag] and [s.value for s in pending] == [ack_pending]

    return done


async def test_gateway_and_worker_expose_their_metrics(
    nc: Client,
    metered_stub: gateway_pb2_grpc.EventGatewayStub,
    gateway_telemetry: Telemetry,
    worker_telemetry: Telemetry,
) -> None:
    await metered_stub.Publish(request(KEYS[0]))
    await metered_stub.PublishBatch(
        gateway_pb2.PublishBatchRequest(entries=[request(k) for k in KEYS[1:]])
    )

    billing = group()
    release = asyncio.Event()
    started: list[str] = []

    @billing.handler(orders_pb2.OrderPlaced)
    async def charge(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        started.append(event.order_id)
        if event.order_id == "o-bad":
            raise Reject("no such customer")
        await release.wait()

    worker = Worker(
        billing,
        nc,
        concurrency=1,
        prefetch=0,
        meter_provider=worker_telemetry.meter_provider,
        metrics_interval=0.2,
    )
    async with running(worker):
        # One event held by the blocked handler, two stored and not delivered yet.
        await eventually(lambda: started == ["o-1"])
        await _scrape_until(worker_telemetry, _gauges(lag=2, ack_pending=1))
        release.set()
        await eventually(lambda: worker.stats.processed == 2 and worker.stats.dead_lettered == 1)
        worker_samples = await _scrape_until(worker_telemetry, _gauges(lag=0, ack_pending=0))
    worker_text, _ = await _scrape(worker_telemetry)
    gateway_text, gateway_samples = await _scrape(gateway_telemetry)

    # Gateway: 3 events sent in 2 publish calls.
    nats = {"messaging_system": "nats", "messaging_operation_name": "publish"}
    sent = _find(gateway_samples, "messaging_client_sent_messages_total", **nats)
    assert [(s.labels["messaging_nats_stream"], s.labels["jetgate_event_type"]) for s in sent] == [
        ("ORDERS", ORDER_PLACED)
    ]
    assert sent[0].labels.get("error_type", "") == ""  # all stored
    assert sent[0].value == 3
    send = {**nats, "messaging_operation_type": "send"}
    assert _value(gateway_samples, "messaging_client_operation_duration_seconds_count", **send) == 2
    buckets = _find(gateway_samples, "messaging_client_operation_duration_seconds_bucket", **send)
    assert {float(s.labels["le"]) for s in buckets} == {*DURATION_BUCKETS, math.inf}
    assert max(s.value for s in buckets) == 2
    assert _value(gateway_samples, "target_info") == 1
    assert _find(gateway_samples, "target_info", service_name=GATEWAY_SERVICE)

    # Worker: 3 deliveries, 2 acked, 1 dead-lettered, lag and ack_pending back to 0.
    consumer = {
        "messaging_system": "nats",
        "messaging_consumer_group_name": "billing",
        "messaging_nats_stream": "ORDERS",
    }
    consumed = "messaging_client_consumed_messages_total"
    assert _value(worker_samples, consumed, messaging_operation_name="receive", **consumer) == 3
    process = {
        **consumer,
        "messaging_operation_name": "process",
        "jetgate_event_type": ORDER_PLACED,
    }
    duration = "messaging_process_duration_seconds"
    counts = {
        s.labels["jetgate_outcome"]: s.value
        for s in _find(worker_samples, f"{duration}_count", **process)
    }
    assert counts == {"ack": 2, "dead_letter": 1}
    (dead_duration,) = _find(worker_samples, f"{duration}_count", jetgate_outcome="dead_letter")
    assert dead_duration.labels["error_type"] == "reject"
    assert _find(worker_samples, f"{duration}_bucket", jetgate_outcome="ack", le="+Inf")
    dead = _find(worker_samples, "jetgate_consumer_dead_letters_total", **consumer)
    assert [(s.labels["jetgate_dead_letter_reason"], s.value) for s in dead] == [("reject", 1)]
    assert _find(worker_samples, "jetgate_consumer_lag", **consumer)
    assert _find(worker_samples, "jetgate_consumer_ack_pending", **consumer)
    assert _find(worker_samples, "target_info", service_name="billing")

    # Keys and subjects are never labels.
    for text in (gateway_text, worker_text):
        assert "o-bad" not in text
        assert "orders.OrderPlaced" not in text


async def test_events_jetstream_refuses_are_counted_by_error_type(
    metered_stub: gateway_pb2_grpc.EventGatewayStub, gateway_telemetry: Telemetry
) -> None:
    await metered_stub.Publish(request("o-1"))
    refused = request("o-1", precondition=event_pb2.Precondition(expected_last_subject_sequence=7))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await metered_stub.Publish(refused)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    _, samples = await _scrape(gateway_telemetry)
    sent = {
        s.labels.get("error_type", ""): s.value
        for s in _find(
            samples, "messaging_client_sent_messages_total", messaging_nats_stream="ORDERS"
        )
    }
    assert sent == {"": 1, "api": 1}
    durations = {
        s.labels.get("error_type", ""): s.value
        for s in _find(samples, "messaging_client_operation_duration_seconds_count")
    }
    assert durations == {"": 1, "api": 1}
