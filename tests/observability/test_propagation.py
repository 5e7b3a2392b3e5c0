"""observability.propagation: trace context and baggage through NATS-style header dicts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from observability import propagation


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    """A private SDK provider (not the global one); nothing is exported."""
    sdk = TracerProvider(shutdown_on_exit=False)
    yield sdk
    sdk.shutdown()


def _traceparent(span: trace.Span) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def test_inject_then_extract_round_trips_the_span_context(provider: TracerProvider) -> None:
    span = provider.get_tracer("test").start_span("publish")
    headers = {"Nats-Msg-Id": "e-1"}
    propagation.inject(headers, trace.set_span_in_context(span))
    span.end()

    assert headers["traceparent"] == _traceparent(span)
    assert span.get_span_context().trace_flags.sampled
    assert "Traceparent" not in headers  # lower case, as NATS keeps it
    assert headers["Nats-Msg-Id"] == "e-1"  # the other headers are left alone
    extracted = trace.get_current_span(propagation.extract(headers)).get_span_context()
    original = span.get_span_context()
    assert (extracted.trace_id, extracted.span_id) == (original.trace_id, original.span_id)
    assert extracted.is_remote
    assert extracted.trace_flags.sampled


def test_inject_defaults_to_the_current_span(provider: TracerProvider) -> None:
    headers: dict[str, str] = {}
    with provider.get_tracer("test").start_as_current_span("handler") as span:
        propagation.inject(headers)
    assert headers["traceparent"] == _traceparent(span)


def test_an_unsampled_context_stays_unsampled() -> None:
    sdk = TracerProvider(sampler=ALWAYS_OFF, shutdown_on_exit=False)
    try:
        span = sdk.get_tracer("test").start_span("dropped")
        headers = propagation.trace_headers(trace.set_span_in_context(span))
        span.end()
    finally:
        sdk.shutdown()
    assert headers["traceparent"] == _traceparent(span)
    assert not span.get_span_context().trace_flags.sampled
    extracted = trace.get_current_span(propagation.extract(headers)).get_span_context()
    assert extracted.is_valid
    assert not extracted.trace_flags.sampled


def test_baggage_travels_with_the_trace_context(provider: TracerProvider) -> None:
    span = provider.get_tracer("test").start_span("publish")
    ctx = baggage.set_baggage("tenant", "acme", trace.set_span_in_context(span))
    headers: dict[str, str] = {}
    propagation.inject(headers, ctx)
    span.end()
    assert headers["baggage"] == "tenant=acme"
    extracted = propagation.extract(headers)
    assert baggage.get_baggage("tenant", extracted) == "acme"
    assert trace.get_current_span(extracted).get_span_context().trace_id == (
        span.get_span_context().trace_id
    )


def test_current_baggage_is_injected_by_default() -> None:
    token = context.attach(baggage.set_baggage("tenant", "t-1"))
    try:
        headers = propagation.trace_headers()
    finally:
        context.detach(token)
    assert headers == {"baggage": "tenant=t-1"}


@pytest.mark.parametrize("headers", [None, {}, {"Nats-Msg-Id": "e-1"}, {"traceparent": "junk"}])
def test_extract_without_a_context_gives_no_valid_span(headers: dict[str, str] | None) -> None:
    extracted = propagation.extract(headers)
    assert not trace.get_current_span(extracted).get_span_context().is_valid
    assert baggage.get_all(extracted) == {}


def test_trace_headers_returns_a_fresh_dict_each_time(provider: TracerProvider) -> None:
    span = provider.get_tracer("test").start_span("publish")
    ctx = trace.set_span_in_context(span)
    first, second = propagation.trace_headers(ctx), propagation.trace_headers(ctx)
    span.end()
    assert first == second == {"traceparent": _traceparent(span)}
    assert first is not second
    first["extra"] = "x"
    assert "extra" not in propagation.trace_headers(ctx)


def test_trace_headers_outside_a_span_is_empty() -> None:
    assert propagation.trace_headers() == {}
    assert propagation.trace_headers(context.Context()) == {}
