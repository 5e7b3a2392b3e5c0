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

An entry with its own trace context (`PublishRequest.trace_context`: a batching client's
events of different traces share one request message) overrides the call's for that event:
its producer span is a child of the entry's context (sampled as that context says), not of
the call's server span, and with tracing off its trace headers are the entry's.

Metrics (`PublishMetrics`): events sent by stream, type and outcome, and the duration of
each publish call.

One publish call: `PublishTelemetry.start(events)` starts the spans and decides each
event's trace headers (`PublishTrace.headers`); the servicer builds the messages with them
and publishes; `PublishTrace.end(outcomes)` (or `fail(exc)`) ends the spans and counts.
Nothing here sees or changes a message.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping, Sequence

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

from gateway.publisher import Outcome, PublishFailure, Stored
from gateway.validation import PreparedEvent
from observability import messaging, propagation
from observability.metrics import PublishMetrics

Context = grpc.aio.ServicerContext[object, object]
# Health checks and reflection would drown the traces of events.
UNTRACED_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
)


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
    """Producer spans and metrics of the servicer's publish calls (see `start`)."""

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

    def start(self, events: Sequence[PreparedEvent], context: Context) -> PublishTrace:
        """Begin the publish of `events`: spans started, each event's trace headers decided.

        End it with `PublishTrace.end` (JetStream's answer) or `PublishTrace.fail`.
        """
        spans: list[trace.Span] = []
        headers: list[dict[str, str]] | None = None
        if any(event.trace_context for event in events):
            return self._start_each(events, context)
        if self._tracer is None:
            headers = _shared(events, propagation.trace_headers(_client_context(context)))
        elif not trace.get_current_span().is_recording():
            # Not sampled: producer spans would not be recorded either; the events carry
            # the call's (unsampled) context, so consumers follow the same decision.
            headers = _shared(events, propagation.trace_headers(None))
        else:
            server = self._server()
            headers = []
            for event in events:
                span = messaging.start_publish(
                    self._tracer,
                    subject=event.subject,
                    stream=event.stream,
                    message_id=event.event_id,
                    body_size=len(event.payload),
                    event_type=event.event_type,
                    key=event.key,
                    server=server,
                )
                spans.append(span)
                headers.append(messaging.span_headers(span))
        return PublishTrace(self._metrics, events, spans, headers)

    def _start_each(self, events: Sequence[PreparedEvent], context: Context) -> PublishTrace:
        """`start` for events of which some carry their own trace context."""
        headers: list[dict[str, str]] = []
        spans: list[trace.Span] = []
        if self._tracer is None:
            call = propagation.trace_headers(_client_context(context))
            for event in events:
                own = event.trace_context
                headers.append(propagation.trace_headers(propagation.extract(own)) or call)
            return PublishTrace(self._metrics, events, spans, headers)
        server = self._server()
        for event in events:
            parent = _entry_context(event)
            span = messaging.start_publish(
                self._tracer,
                subject=event.subject,
                stream=event.stream,
                message_id=event.event_id,
                body_size=len(event.payload),
                event_type=event.event_type,
                key=event.key,
                server=server,
                context=parent,
            )
            spans.append(span)
            headers.append(messaging.span_headers(span, parent))
        return PublishTrace(self._metrics, events, spans, headers)


class PublishTrace:
    """One publish call in flight: its spans, its events' trace headers, its clock."""

    __slots__ = ("_events", "_metrics", "_spans", "_started", "headers")

    def __init__(
        self,
        metrics: PublishMetrics,
        events: Sequence[PreparedEvent],
        spans: list[trace.Span],
        headers: list[dict[str, str]] | None,
    ) -> None:
        self._metrics = metrics
        self._events = events
        self._spans = spans
        # The trace headers of each event, in order (None: no event gets any).
        self.headers: Sequence[Mapping[str, str]] | None = headers
        self._started = time.perf_counter()

    def end(self, outcomes: Sequence[Outcome] | PublishFailure) -> None:
        """End the spans with JetStream's answer (one outcome per event, or one for all)."""
        elapsed = time.perf_counter() - self._started
        each = [outcomes] * len(self._events) if isinstance(outcomes, PublishFailure) else outcomes
        if self._spans:
            for span, outcome in zip(self._spans, each, strict=True):
                if isinstance(outcome, Stored):
                    messaging.end_publish(
                        span, sequence=outcome.sequence, duplicate=outcome.duplicate
                    )
                else:
                    messaging.end_publish(span, error_type=outcome.kind, error=outcome.description)
        if self._metrics.enabled:
            self._count(each, elapsed)

    def fail(self, exc: BaseException) -> None:
        """End the spans of a publish that raised (e.g. cancelled with its RPC)."""
        for span in self._spans:
            messaging.end_publish(span, error_type=type(exc).__qualname__, error=repr(exc))

    def _count(self, outcomes: Sequence[Outcome], elapsed: float) -> None:
        counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        failed: str = ""
        for event, outcome in zip(self._events, outcomes, strict=True):
            error: str = outcome.kind if isinstance(outcome, PublishFailure) else ""
            failed = failed or error
            counts[(event.stream, event.event_type, error)] += 1
        for (stream, event_type, error), count in counts.items():
            self._metrics.sent(count, stream=stream, event_type=event_type, error_type=error)
        self._metrics.operation(elapsed, error_type=failed)


def _shared(
    events: Sequence[PreparedEvent], headers: dict[str, str]
) -> list[dict[str, str]] | None:
    """The same trace headers for every event (None when there are none)."""
    return [headers] * len(events) if headers else None


def _entry_context(event: PreparedEvent) -> otel_context.Context | None:
    """The event's own trace context (None: it has none, or no valid traceparent)."""
    if not event.trace_context:
        return None
    parent = propagation.extract(event.trace_context)
    if not trace.get_current_span(parent).get_span_context().is_valid:
        return None
    return parent


def _client_context(context: Context) -> otel_context.Context | None:
    """The trace context the client sent in its gRPC metadata (None: none)."""
    metadata = context.invocation_metadata()
    if not metadata:
        return None
    return propagation.extract({k: v for k, v in metadata if isinstance(v, str)})
