"""The spans of one event's trip (docs/design.md section 9): PRODUCER `publish <subject>` in the
gateway, CONSUMER `process <subject>` in every worker that handles it.

The producer span's context travels in the NATS headers (`propagation`); a process span's
parent is that context, and it also links to it, so backends that show either relation
find the publish. Redeliveries are separate process spans under the same parent, each with
its `messaging.nats.delivery_count`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from observability import propagation
from observability import semconv as sc

Attributes = dict[str, AttributeValue]
INSTRUMENTATION = "jetgate"


def tracer(provider: trace.TracerProvider | None) -> Tracer | None:
    """jetgate's tracer from `provider`; None (tracing off) when there is no provider."""
    return None if provider is None else provider.get_tracer(INSTRUMENTATION)


def server_attributes(host: str | None, port: int | None) -> Attributes:
    """`server.address` / `server.port` of the NATS server a client is connected to."""
    attributes: Attributes = {}
    if host:
        attributes[sc.SERVER_ADDRESS] = host
    if port:
        attributes[sc.SERVER_PORT] = port
    return attributes


def start_publish(
    tracer: Tracer,
    *,
    subject: str,
    stream: str,
    message_id: str,
    body_size: int,
    event_type: str,
    key: str,
    server: Attributes,
    context: otel_context.Context | None = None,
) -> Span:
    """Start the PRODUCER span of one event, a child of `context` (default: the current
    span, if any)."""
    return tracer.start_span(
        f"{sc.PUBLISH} {subject}",
        kind=SpanKind.PRODUCER,
        attributes={
            sc.MESSAGING_SYSTEM: sc.SYSTEM_NATS,
            sc.MESSAGING_OPERATION_TYPE: sc.OPERATION_SEND,
            sc.MESSAGING_OPERATION_NAME: sc.PUBLISH,
            sc.MESSAGING_DESTINATION_NAME: subject,
            sc.MESSAGING_MESSAGE_ID: message_id,
            sc.MESSAGING_MESSAGE_BODY_SIZE: body_size,
            sc.NATS_STREAM: stream,
            sc.EVENT_TYPE: event_type,
            sc.EVENT_KEY: key,
            **server,
        },
        context=context,
    )


def span_headers(span: Span, context: otel_context.Context | None = None) -> dict[str, str]:
    """The trace headers of `span` with the baggage of `context` (default: the current
    one), a fresh dict."""
    return propagation.trace_headers(trace.set_span_in_context(span, context))


def end_publish(
    span: Span,
    *,
    sequence: int = 0,
    duplicate: bool = False,
    error_type: str = "",
    error: str = "",
) -> None:
    """End a producer span with JetStream's answer: the sequence, or the failure."""
    if error_type:
        span.set_attribute(sc.ERROR_TYPE, error_type)
        span.set_status(Status(StatusCode.ERROR, error))
    else:
        span.set_attribute(sc.NATS_SEQUENCE, sequence)
        if duplicate:
            span.set_attribute(sc.NATS_DUPLICATE, True)
    span.end()


@contextmanager
def process_span(
    tracer: Tracer,
    headers: Mapping[str, str],
    *,
    subject: str,
    group: str,
    stream: str,
    sequence: int,
    delivery_count: int,
    body_size: int,
    message_id: str,
    event_type: str,
    key: str,
    server: Attributes,
) -> Iterator[Span]:
    """The CONSUMER span of one delivery, current while the block (the handler) runs.

    Parent: the context in `headers`; also linked to it. An exception leaving the block is
    recorded and sets ERROR; failures the worker handles itself use `record_failure`.
    """
    parent = propagation.extract(headers)
    parent_span = trace.get_current_span(parent).get_span_context()
    attributes: Attributes = {
        sc.MESSAGING_SYSTEM: sc.SYSTEM_NATS,
        sc.MESSAGING_OPERATION_TYPE: sc.OPERATION_PROCESS,
        sc.MESSAGING_OPERATION_NAME: sc.PROCESS,
        sc.MESSAGING_DESTINATION_NAME: subject,
        sc.MESSAGING_CONSUMER_GROUP_NAME: group,
        sc.MESSAGING_MESSAGE_BODY_SIZE: body_size,
        sc.NATS_STREAM: stream,
        sc.NATS_SEQUENCE: sequence,
        sc.NATS_DELIVERY_COUNT: delivery_count,
        **server,
    }
    # From the headers as stored: a delivery that is not a jetgate event lacks them.
    for name, value in (
        (sc.MESSAGING_MESSAGE_ID, message_id),
        (sc.EVENT_TYPE, event_type),
        (sc.EVENT_KEY, key),
    ):
        if value:
            attributes[name] = value
    # The extracted context becomes current too: its baggage is the handler's.
    token = otel_context.attach(parent)
    try:
        with tracer.start_as_current_span(
            f"{sc.PROCESS} {subject}",
            kind=SpanKind.CONSUMER,
            links=[Link(parent_span)] if parent_span.is_valid else None,
            attributes=attributes,
        ) as span:
            yield span
    finally:
        otel_context.detach(token)


def record_failure(span: Span, exc: BaseException) -> None:
    """Record a handler's exception on `span` and mark it failed."""
    span.record_exception(exc)
    span.set_attribute(sc.ERROR_TYPE, type(exc).__qualname__)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def record_dead_letter(span: Span, *, reason: str, error: str, subject: str) -> None:
    """The dead-letter span event: why, and where the event now is."""
    span.add_event(
        sc.DEAD_LETTER_EVENT,
        {
            sc.DEAD_LETTER_REASON: reason,
            sc.DEAD_LETTER_SUBJECT: subject,
            "exception.message": error,
        },
    )
    if span.is_recording():
        span.set_status(Status(StatusCode.ERROR, f"dead-lettered ({reason}): {error}"))
