"""What the worker does with one delivery: decode it, run its handler, settle it.

Events published straight into a stream by a CloudEvents SDK (binary mode) are handled
like the gateway's: their extension attributes reach the handler (`Delivery.extensions`)
and stay on their dead letters (every `ce-*` header does).

Outcomes: handler returns -> ack; `Reject`, an unknown type or an undecodable payload ->
dead letter at once; any other exception -> nak with the group's backoff (`Retry(delay)`:
with its delay), or dead letter when it was the last allowed attempt; `HandBack` -> nak
without delay, not a failure (the member that got it went away: another takes it at once;
`handed_back`); an event redriven for another group -> ack unseen.
Acks are fire-and-forget (`msg.ack()`), not double acks (`ack_sync()`): nats-server answers
an ack before it writes the consumer's state (at most every 100 ms, under any
sync_interval), so its answer promises no durability, and waiting for it cost 34-41% of
consume throughput (docs/performance.md#durability). Lost or rolled-back acks mean
redeliveries: at-least-once.
A handler that runs longer than the group's handler timeout is cancelled, and the attempt
counts as failed (`error.type` HandlerTimeout): retried with backoff, dead letter last.

Dead letters always fit the server's max_payload (`deadletter.fit`: an event near the
limit is dead-lettered with a truncated payload). A dead letter that cannot be stored
(DLQ stream missing or full, JetStream away) never uses up a delivery: the event is held,
kept alive with in_progress, and the store retried with backoff (re-creating a missing DLQ
stream) until it succeeds; each failed try is a warning and counts in
`jetgate.consumer.dead_letter_failures`. A held event is no longer running its handler, so
it gives its handler slot back (`on_hold`: the worker still counts it among the events it
holds, so an outage holds at most concurrency + prefetch events per worker), and other
events keep being handled. The retries of all held events share one signal: as soon as any
dead letter is stored (DLQ is back), every held store is tried again at once, not at its
own next backoff (at most DEAD_LETTER_RETRY_MAX).

Trace context: the context in the event's headers is current while its handler runs, with
tracing on or off, so the follow-ups a handler publishes (e.g. through an instrumented gRPC
channel, which injects the current context even with no tracer provider) carry the event's
trace. Telemetry (a tracer given, see `observability`): the delivery is handled inside a
CONSUMER span `process <subject>` whose parent is the trace context in the event's headers
(plus a link to it), so the handler's own spans and the follow-ups it publishes continue
the event's trace; a redelivery is another process span with its delivery count. A failing
handler's exception is recorded on the span; dead-lettering is a span event. Metrics:
each delivery's processing time by outcome, and dead letters by reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from opentelemetry import context as otel_context
from opentelemetry import trace

from consumers import deadletter
from consumers.delivery import Delivery, HandBack, Reject, Retry
from consumers.group import ConsumerGroup
from consumers.headers import text_headers
from jetgate import wire
from jetgate.wire import DeadLetterReason as Reason
from observability import messaging, propagation
from observability import semconv as sc
from observability.metrics import ConsumeMetrics

log = logging.getLogger("jetgate.consumers")

# Backoff of a dead-letter store that failed (s): doubling from the first, at most the max.
DEAD_LETTER_RETRY_FIRST = 0.5
# Low: a held event waits for DLQ to come back, and a store costs one request.
DEAD_LETTER_RETRY_MAX = 5.0
HANDLER_TIMEOUT = "HandlerTimeout"  # error.type of an attempt whose handler timed out
ACK, RETRY, DEAD_LETTER, SKIP = "ack", "retry", "dead_letter", "skip"
HAND_BACK = "hand_back"
Outcome = tuple[str, str]  # (what the worker did, error.type or "")


@dataclass(slots=True)
class WorkerStats:
    """What one worker did: events handled OK, handler failures, redeliveries seen, dead
    letters stored, events skipped (redriven for another group), failures that were handler
    timeouts, events handed back (prefetched ones when all handler slots are stuck, and
    those a handler raised `HandBack` for), and in flight."""

    processed: int = 0
    failed: int = 0
    redelivered: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    timed_out: int = 0
    handed_back: int = 0
    in_flight: int = 0


class DeliveryHandler:
    """Handles deliveries of `group` (see module doc), counting into `stats`."""

    def __init__(
        self,
        group: ConsumerGroup,
        nc: NATS,
        *,
        stats: WorkerStats,
        metrics: ConsumeMetrics,
        tracer: trace.Tracer | None,
        on_hold: Callable[[asyncio.Task[Any]], None] | None = None,
    ) -> None:
        self.group = group
        # Called with the handling task when its event is first held (dead letter not
        # stored): its handler is done, so the worker can give its slot to another event.
        self._on_hold = on_hold
        # Set (and replaced) whenever a dead letter is stored: wakes every held retry.
        self._dead_letter_stored = asyncio.Event()
        self._nc = nc
        self._js = nc.jetstream()
        self._stats = stats
        self._metrics = metrics
        self._tracer = tracer
        # The handler timeout, enforced by `expire_overdue` from the worker's periodic tick
        # (no timer per delivery: asyncio.timeout() costs about 8 us per call): the tasks
        # running a handler, since when, and those cancelled for running too long.
        self._in_handler: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()

    async def handle(self, msg: Msg) -> None:
        """Run the handler for `msg` and settle it (ack, nak or dead letter)."""
        meta = msg.metadata
        headers = text_headers(msg.headers)
        started = time.perf_counter()
        if self._tracer is None:
            # No spans, but the event's trace context (global propagator) is current while
            # its handler runs, so what the handler publishes continues the event's trace.
            token = otel_context.attach(propagation.extract(headers))
            try:
                outcome, error_type = await self._process(msg, meta, headers)
            finally:
                otel_context.detach(token)
        else:
            url = self._nc.connected_url
            with messaging.process_span(
                self._tracer,
                headers,
                subject=msg.subject,
                group=self.group.name,
                stream=meta.stream,
                sequence=meta.sequence.stream,
                delivery_count=meta.num_delivered,
                body_size=len(msg.data),
                message_id=wire.attribute_value(headers.get(wire.CE_ID, "")),
                event_type=headers.get(wire.CE_TYPE, ""),
                key=wire.attribute_value(headers.get(wire.CE_SUBJECT, "")),
                server=messaging.server_attributes(url.hostname, url.port) if url else {},
            ) as span:
                outcome, error_type = await self._process(msg, meta, headers)
                span.set_attribute(sc.OUTCOME, outcome)
        self._metrics.processed(
            time.perf_counter() - started,
            event_type=headers.get(wire.CE_TYPE, ""),
            outcome=outcome,
            error_type=error_type,
        )

    def expire_overdue(self, now: float) -> None:
        """Cancel the handlers running for longer than the group's handler timeout; their
        attempts count as failed (see `_process`)."""
        limit = self.group.effective_handler_timeout
        for task, started in self._in_handler.items():
            if now - started >= limit and task not in self._expired:
                self._expired.add(task)
                task.cancel()

    def use(self, nc: NATS) -> None:
        """Settle and dead-letter over `nc` from now on (the worker replaced its connection)."""
        self._nc = nc
        self._js = nc.jetstream()

    async def _process(self, msg: Msg, meta: Msg.Metadata, headers: Mapping[str, str]) -> Outcome:
        group = self.group
        attempt = meta.num_delivered
        if attempt > 1:
            self._stats.redelivered += 1
        redrive_for = headers.get(wire.REDRIVE_GROUP)
        if redrive_for and redrive_for != group.name:
            self._stats.skipped += 1
            await _settle(msg.ack(), msg, group.name)
            return SKIP, ""
        dead = functools.partial(self._dead_letter, msg, headers, attempt)
        try:
            envelope = wire.decode_envelope(msg.subject, headers)
        except ValueError as exc:
            return await dead(Reason.UNDECODABLE, str(exc))
        entry = group.handlers.get(envelope.type)
        if entry is None:
            return await dead(
                Reason.UNKNOWN_TYPE, f"group {group.name} has no handler for {envelope.type}"
            )
        message_type, handler = entry
        try:
            event = message_type.FromString(msg.data)
        except DecodeError as exc:
            return await dead(Reason.UNDECODABLE, f"payload is not a valid {envelope.type}: {exc}")
        if attempt > group.max_deliver:
            error = f"attempt {attempt} of {group.max_deliver}: the previous worker stopped"
            return await dead(Reason.EXHAUSTED, error)
        delivery = Delivery(
            event_id=envelope.id,
            event_type=envelope.type,
            key=envelope.key,
            source=envelope.source,
            time=envelope.time,
            subject=msg.subject,
            stream=meta.stream,
            sequence=meta.sequence.stream,
            attempt=attempt,
            group=group.name,
            headers=envelope.headers,
            raw_headers=headers,
            extensions=MappingProxyType(wire.extensions(headers)),
            stored_time=meta.timestamp,
            payload=msg.data,
            _progress=_progress(msg),
        )
        task = asyncio.current_task()
        assert task is not None
        failure: BaseException | None = None
        self._in_handler[task] = time.monotonic()
        try:
            await handler(event, delivery)
        except (Exception, asyncio.CancelledError) as exc:
            failure = exc
        finally:
            # Settling and dead-lettering are never cut short by the handler timeout.
            del self._in_handler[task]
            timed_out = task in self._expired
            self._expired.discard(task)
        if timed_out:
            task.uncancel()  # our cancellation, consumed here (or swallowed by the handler)
        elif isinstance(failure, asyncio.CancelledError):
            raise failure  # cancelled by someone else (the worker's drain)
        if failure is None:
            await _settle(msg.ack(), msg, group.name)
            self._stats.processed += 1
            return ACK, ""
        if isinstance(failure, Reject):
            return await dead(Reason.REJECT, failure.reason)
        if isinstance(failure, HandBack):
            self._stats.handed_back += 1
            await _settle(msg.nak(), msg, group.name)
            return HAND_BACK, ""
        self._stats.failed += 1
        if isinstance(failure, asyncio.CancelledError):
            self._stats.timed_out += 1
            error_type = HANDLER_TIMEOUT
            limit = group.effective_handler_timeout
            error = f"{HANDLER_TIMEOUT}: the handler did not return within {limit:g}s"
        else:
            error_type = type(failure).__qualname__
            error = f"{type(failure).__name__}: {failure}"
        messaging.record_failure(trace.get_current_span(), failure)
        if attempt >= group.max_deliver:
            return await dead(Reason.EXHAUSTED, error)
        delay = group.retry_delay(attempt)
        if isinstance(failure, Retry) and failure.delay is not None:
            delay = failure.delay
        log.warning(
            "group %s: %s seq %d attempt %d failed (%s); retry in %gs",
            *(group.name, msg.subject, delivery.sequence, attempt, error, delay),
        )
        await _settle(msg.nak(delay=delay), msg, group.name)
        return RETRY, error_type

    async def _dead_letter(
        self, msg: Msg, headers: Mapping[str, str], attempt: int, reason: Reason, error: str
    ) -> Outcome:
        """Store the dead letter, then terminate `msg`.

        A failed store never uses up a delivery: the event stays with this worker (kept
        alive with in_progress like any running one) and the store is retried with backoff,
        re-creating the DLQ stream when it is missing, until it succeeds (or the worker
        drains and cancels it: then JetStream redelivers it after ack_wait).
        """
        meta = msg.metadata
        payload, dead_headers = deadletter.fit(
            msg.data,
            deadletter.dead_letter_headers(
                headers,
                stream=meta.stream,
                subject=msg.subject,
                sequence=meta.sequence.stream,
                group=self.group.name,
                attempts=attempt,
                reason=reason,
                error=error,
            ),
            max_payload=self._nc.max_payload,
        )
        subject = wire.dead_letter_subject(self.group.name, msg.subject)
        pause = DEAD_LETTER_RETRY_FIRST
        failures = 0
        while True:
            # Taken before the try: a store that succeeds meanwhile ends the pause below.
            stored = self._dead_letter_stored
            try:
                # A fresh dict per try: nats-py's publish mutates the one it is given.
                await self._js.publish(subject, payload, headers=dict(dead_headers))
                break
            except (NatsError, TimeoutError) as exc:
                if failures == 0 and self._on_hold is not None:
                    task = asyncio.current_task()
                    assert task is not None
                    self._on_hold(task)
                failures += 1
                self._metrics.dead_letter_failed()
                log.warning(
                    "group %s: dead letter of %s seq %d not stored (%r, try %d); "
                    "the event is held, next try in %gs",
                    *(self.group.name, msg.subject, meta.sequence.stream, exc, failures, pause),
                )
            with contextlib.suppress(NatsError, TimeoutError):
                await deadletter.ensure_stream(self._js)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await stored.wait()
            pause = min(pause * 2, DEAD_LETTER_RETRY_MAX)
        self._dead_letter_stored.set()
        self._dead_letter_stored = asyncio.Event()
        await _settle(msg.term(), msg, self.group.name)
        self._stats.dead_lettered += 1
        self._metrics.dead_lettered(reason.value)
        messaging.record_dead_letter(
            trace.get_current_span(), reason=reason.value, error=error, subject=subject
        )
        cut = (
            f"; truncated from {len(msg.data)} bytes" if wire.DEAD_TRUNCATED in dead_headers else ""
        )
        log.warning(
            "group %s: %s seq %d dead-lettered (%s: %s%s)",
            *(self.group.name, msg.subject, meta.sequence.stream, reason.value, error, cut),
        )
        return DEAD_LETTER, reason.value


async def _settle(settling: Awaitable[None], msg: Msg, group: str) -> None:
    """Await an ack, nak or term of `msg`; a failure (the connection is gone) is logged:
    JetStream redelivers the event after ack_wait."""
    try:
        await settling
    except (NatsError, TimeoutError) as exc:
        log.warning(
            "group %s: %s seq %d not settled (%r); redelivered after ack_wait",
            *(group, msg.subject, msg.metadata.sequence.stream, exc),
        )


def _progress(msg: Msg) -> Callable[[], Awaitable[None]]:
    """`in_progress` of `msg`, and nothing else of it, for the handler's `Delivery`."""

    async def progress() -> None:
        await msg.in_progress()

    return progress
