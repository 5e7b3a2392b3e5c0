"""observability.metrics: instrument names, units and attributes (in-memory SDK reader)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    NumberDataPoint,
)

from observability.metrics import DURATION_BUCKETS, ConsumeMetrics, PublishMetrics

ORDER_PLACED = "jetgate.examples.orders.v1.OrderPlaced"
NATS_PUBLISH = {"messaging.system": "nats", "messaging.operation.name": "publish"}
CONSUMER = {
    "messaging.system": "nats",
    "messaging.consumer.group.name": "billing",
    "messaging.nats.stream": "ORDERS",
}
FORBIDDEN = {"messaging.destination.name", "jetgate.event.key", "messaging.message.id"}


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    sdk = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    yield sdk
    sdk.shutdown()


def _metrics(reader: InMemoryMetricReader) -> dict[str, Metric]:
    data = reader.get_metrics_data()
    if data is None:
        return {}
    return {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def _points(metric: Metric) -> list[Any]:
    return list(metric.data.data_points)


def _by_attributes(metric: Metric) -> dict[frozenset[tuple[str, Any]], Any]:
    return {frozenset((p.attributes or {}).items()): p for p in _points(metric)}


def _assert_no_unbounded_labels(metrics: dict[str, Metric]) -> None:
    for metric in metrics.values():
        for point in _points(metric):
            assert not FORBIDDEN & set(point.attributes or {}), (metric.name, point.attributes)


def test_publish_instruments(provider: MeterProvider, reader: InMemoryMetricReader) -> None:
    publish = PublishMetrics(provider)
    assert publish.enabled
    publish.sent(2, stream="ORDERS", event_type=ORDER_PLACED)
    publish.sent(1, stream="ORDERS", event_type=ORDER_PLACED)
    publish.sent(1, stream="ORDERS", event_type=ORDER_PLACED, error_type="timeout")
    publish.operation(0.02)
    publish.operation(0.3, error_type="timeout")

    metrics = _metrics(reader)
    assert set(metrics) == {"messaging.client.sent.messages", "messaging.client.operation.duration"}
    sent = metrics["messaging.client.sent.messages"]
    assert sent.unit == "{message}"
    stored = {**NATS_PUBLISH, "messaging.nats.stream": "ORDERS", "jetgate.event.type": ORDER_PLACED}
    points = _by_attributes(sent)
    assert set(points) == {
        frozenset(stored.items()),
        frozenset({**stored, "error.type": "timeout"}.items()),
    }
    assert points[frozenset(stored.items())].value == 3
    assert points[frozenset({**stored, "error.type": "timeout"}.items())].value == 1
    assert sent.data.is_monotonic

    duration = metrics["messaging.client.operation.duration"]
    assert duration.unit == "s"
    call = {**NATS_PUBLISH, "messaging.operation.type": "send"}
    points = _by_attributes(duration)
    assert set(points) == {
        frozenset(call.items()),
        frozenset({**call, "error.type": "timeout"}.items()),
    }
    ok: HistogramDataPoint = points[frozenset(call.items())]
    assert (ok.count, ok.sum) == (1, pytest.approx(0.02))
    assert tuple(ok.explicit_bounds) == DURATION_BUCKETS
    _assert_no_unbounded_labels(metrics)


def _consume(
    provider: MeterProvider | None, pending: tuple[int, int] | None = None
) -> tuple[ConsumeMetrics, list[tuple[int, int] | None]]:
    box: list[tuple[int, int] | None] = [pending]
    return ConsumeMetrics(provider, group="billing", stream="ORDERS", pending=lambda: box[0]), box


def test_consume_instruments(provider: MeterProvider, reader: InMemoryMetricReader) -> None:
    consume, _ = _consume(provider)
    assert consume.enabled
    for _ in range(3):
        consume.received()
    consume.processed(0.01, event_type=ORDER_PLACED, outcome="ack")
    consume.processed(0.02, event_type=ORDER_PLACED, outcome="ack")
    consume.processed(0.5, event_type=ORDER_PLACED, outcome="retry", error_type="ValueError")
    consume.processed(0.1, event_type=ORDER_PLACED, outcome="dead_letter", error_type="reject")
    consume.dead_lettered("reject")

    metrics = _metrics(reader)
    assert set(metrics) == {
        "messaging.client.consumed.messages",
        "messaging.process.duration",
        "jetgate.consumer.dead_letters",
    }  # the gauges report nothing while `pending` is None
    consumed = metrics["messaging.client.consumed.messages"]
    assert consumed.unit == "{message}"
    ((point),) = _points(consumed)
    assert dict(point.attributes) == {**CONSUMER, "messaging.operation.name": "receive"}
    assert point.value == 3

    duration = metrics["messaging.process.duration"]
    assert duration.unit == "s"
    process = {
        **CONSUMER,
        "messaging.operation.name": "process",
        "jetgate.event.type": ORDER_PLACED,
    }
    points = _by_attributes(duration)
    ack = frozenset({**process, "jetgate.outcome": "ack"}.items())
    retry = frozenset({**process, "jetgate.outcome": "retry", "error.type": "ValueError"}.items())
    dead = frozenset({**process, "jetgate.outcome": "dead_letter", "error.type": "reject"}.items())
    assert set(points) == {ack, retry, dead}
    assert (points[ack].count, points[ack].sum) == (2, pytest.approx(0.03))
    assert tuple(points[ack].explicit_bounds) == DURATION_BUCKETS

    dead_letters = metrics["jetgate.consumer.dead_letters"]
    assert dead_letters.unit == "{message}"
    ((point),) = _points(dead_letters)
    assert dict(point.attributes) == {**CONSUMER, "jetgate.dead_letter.reason": "reject"}
    assert point.value == 1
    _assert_no_unbounded_labels(metrics)


def test_the_gauges_report_what_pending_returns(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    _, box = _consume(provider, pending=(7, 3))
    metrics = _metrics(reader)
    lag, ack_pending = metrics["jetgate.consumer.lag"], metrics["jetgate.consumer.ack_pending"]
    assert (lag.unit, ack_pending.unit) == ("{message}", "{message}")
    ((lag_point),) = _points(lag)
    ((ack_point),) = _points(ack_pending)
    assert isinstance(lag_point, NumberDataPoint)
    assert (lag_point.value, ack_point.value) == (7, 3)
    assert dict(lag_point.attributes) == dict(ack_point.attributes) == CONSUMER

    box[0] = (0, 12)  # read again at each collection
    metrics = _metrics(reader)
    assert _points(metrics["jetgate.consumer.lag"])[0].value == 0
    assert _points(metrics["jetgate.consumer.ack_pending"])[0].value == 12

    box[0] = None  # unknown again: no value rather than a stale or made-up one
    metrics = _metrics(reader)
    for name in ("jetgate.consumer.lag", "jetgate.consumer.ack_pending"):
        assert name not in metrics or _points(metrics[name]) == []


def test_without_a_provider_nothing_is_recorded_and_nothing_fails() -> None:
    calls: list[int] = []

    def pending() -> tuple[int, int]:
        calls.append(1)
        return (1, 1)

    publish = PublishMetrics(None)
    consume = ConsumeMetrics(None, group="billing", stream="ORDERS", pending=pending)
    assert not publish.enabled
    assert not consume.enabled
    publish.sent(1, stream="ORDERS", event_type=ORDER_PLACED, error_type="timeout")
    publish.operation(0.1)
    consume.received()
    consume.processed(0.1, event_type=ORDER_PLACED, outcome="ack")
    consume.dead_lettered("reject")
    assert calls == []  # no reader ever asks for the gauges


def test_instruments_are_per_provider(
    reader: InMemoryMetricReader, provider: MeterProvider
) -> None:
    other_reader = InMemoryMetricReader()
    other = MeterProvider(metric_readers=[other_reader], shutdown_on_exit=False)
    try:
        PublishMetrics(provider).sent(1, stream="ORDERS", event_type=ORDER_PLACED)
        PublishMetrics(other).sent(5, stream="ORDERS", event_type=ORDER_PLACED)
        (mine,) = _points(_metrics(reader)["messaging.client.sent.messages"])
        (theirs,) = _points(_metrics(other_reader)["messaging.client.sent.messages"])
        assert (mine.value, theirs.value) == (1, 5)
    finally:
        other.shutdown()
