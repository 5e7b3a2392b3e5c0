"""The gateway's share of a trace and its publish metrics (docs/design.md section 9).

Tracing on (a tracer provider given): the gRPC server span comes from
opentelemetry-instrumentation-grpc; here every event gets a PRODUCER span
`publish <subject>`, a child of that server span (a batch: one per event, all siblings),
whose context goes into the event's NATS headers. The span ends with JetStream's answer:
the stream sequence, or the failure as ERROR. A call without trace context starts a trace.

A call the sampler did not sample gets no producer spans (they would not be recorded): its
events carry the call's context with the sampled flag off, so consumers decide alike. This
keeps head sampling cheap (`python -m bench --scenario publish-batch-100-traced-1pct`).

Tracing off: no spans, but a trace context the client sent (gRPC metadata) is still copied
into the events' headers, so consumers continue the client's trace.

Metrics (`PublishMetrics`): events sent by stream, type and outcome, and the duration of
each publish call.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

from gateway.publisher import Outcome, PublishFailure, Stored
from gateway.validation import PreparedEvent
from jetgate import wire
from observability import messaging, propagation
from observability.metrics import PublishMetrics

log = logging.getLogger("jetgate.gateway")
Context = grpc.aio.ServicerContext[object, object]
Send = Callable[[], Awaitable[Sequence[Outcome] | PublishFailure]]
# Health checks and reflection would drown the traces of events.
UNTRACED_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")


def server_interceptors(provider: trace.TracerProvider | None) -> list[grpc.aio.ServerInterceptor]:
    """The gRPC server-span interceptor (none when tracing is off)."""
    if provider is None:
        return []
    untraced = filters.any_of(*(filters.service_name(s) for s in UNTRACED_SERVICES))
    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=provider, filter_=filters.negate(untraced)
    )
    return [interceptor]


class PublishTelemetry:
    """Wraps each publish call of the servicer in producer spans and metrics."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None,
        metrics: PublishMetrics,
        server: Callable[[], messaging.Attributes],
    ) -> None:
        self._tracer = messaging.tracer(tracer_provider)
        self._metrics = metrics
        self._server = server

    async def publish(
        self, events: Sequence[PreparedEvent], context: Context, send: Send
    ) -> Sequence[Outcome] | PublishFailure:
        """Run `send()` for `events` (their messages are ours to add trace headers to)."""
        spans = self._start(events, context)
        started = time.perf_counter()
        try:
            outcomes = await send()
        except BaseException as exc:  # cancelled with the RPC: the spans still end
            for span in spans:
                messaging.end_publish(span, error_type=type(exc).__qualname__, error=repr(exc))
            raise
        elapsed = time.perf_counter() - started
        each = [outcomes] * len(events) if isinstance(outcomes, PublishFailure) else outcomes
        if spans:
            for span, outcome in zip(spans, each, strict=True):
                if isinstance(outcome, Stored):
                    messaging.end_publish(
                        span, sequence=outcome.sequence, duplicate=outcome.duplicate
                    )
                else:
                    messaging.end_publish(span, error_type=outcome.kind, error=outcome.description)
        if self._metrics.enabled:
            self._count(events, each, elapsed)
        return outcomes

    def _start(self, events: Sequence[PreparedEvent], context: Context) -> list[trace.Span]:
        if self._tracer is None:
            _copy_context(events, _client_context(context))
            return []
        if not trace.get_current_span().is_recording():
            # Not sampled: producer spans would not be recorded either; the events carry
            # the call's (unsampled) context, so consumers follow the same decision.
            _copy_context(events, None)
            return []
        server = self._server()
        spans = []
        for event in events:
            message = event.message
            span = messaging.start_publish(
                self._tracer,
                subject=message.subject,
                stream=event.stream,
                message_id=event.event_id,
                body_size=len(message.payload),
                event_type=message.headers.get(wire.CE_TYPE, ""),
                key=message.headers.get(wire.CE_SUBJECT, ""),
                server=server,
            )
            _add_trace_headers(event, messaging.span_headers(span))
            spans.append(span)
        return spans

    def _count(
        self, events: Sequence[PreparedEvent], outcomes: Sequence[Outcome], elapsed: float
    ) -> None:
        counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        failed: str = ""
        for event, outcome in zip(events, outcomes, strict=True):
            error: str = outcome.kind if isinstance(outcome, PublishFailure) else ""
            failed = failed or error
            counts[(event.stream, event.message.headers.get(wire.CE_TYPE, ""), error)] += 1
        for (stream, event_type, error), count in counts.items():
            self._metrics.sent(count, stream=stream, event_type=event_type, error_type=error)
        self._metrics.operation(elapsed, error_type=failed)


def _client_context(context: Context) -> otel_context.Context | None:
    """The trace context the client sent in its gRPC metadata (None: none)."""
    metadata = context.invocation_metadata()
    if not metadata:
        return None
    return propagation.extract({k: v for k, v in metadata if isinstance(v, str)})


def _copy_context(events: Sequence[PreparedEvent], context: otel_context.Context | None) -> None:
    """Put the trace headers of `context` (None: the current one) on every event."""
    headers = propagation.trace_headers(context)
    if headers:
        for event in events:
            _add_trace_headers(event, headers)


def _add_trace_headers(event: PreparedEvent, headers: dict[str, str]) -> None:
    """Add `headers` to `event` when they fit under its size limit; else it goes untraced.

    Validation checked the event's size without them; a message over nats-server's
    max_payload would make the server close the connection, and tracing must never be
    why a publish fails. (A client's large tracestate or baggage is what could exceed it.)
    """
    if wire.encoded_headers_size(headers) - wire.EMPTY_HEADERS_SIZE <= event.room:
        event.message.headers.update(headers)
    else:
        log.warning(
            "event %s: trace headers left out (%d bytes left under the size limit)",
            *(event.event_id, event.room),
        )
