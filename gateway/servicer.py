"""The jetgate.v1.EventGateway servicer: Publish, PublishBatch, PublishStream here;
Subscribe (`gateway.subscribe`) and Read (`gateway.read`) are delegated.

One publish reads top to bottom (`_publish`, `_publish_all`): validate every entry
(`gateway.validation`: sizes counted with every header the gateway adds), start telemetry
(spans started, trace headers decided), build each NATS message once with all its headers
(`validation.outbound`), publish, end telemetry with JetStream's answer. No message changes
after it is built. The publish, all of it (window room, handing messages to NATS, the
acknowledgement), takes at most `publish_timeout` or the call's remaining deadline; past it
the entries are DEADLINE_EXCEEDED (they may be stored: retry with the same event id).

Authorization comes first (`gateway.security.Caller`): with auth on, an entry whose event
type the caller may not publish is PERMISSION_DENIED (its own result in a batch; an atomic
batch with one stores nothing), and every stored event carries the caller's principal
(`Jetgate-Principal`, counted in its size).

Publishing is pipelined: a batch is sent as one pipelined JetStream operation and
concurrent RPCs share the connection's pipeline (see `gateway.publisher`). Results:
- Publish: the PublishResponse, or the RPC fails with the event's status.
- PublishBatch / PublishStream: one PublishResult per entry, in order. A request that is
  malformed as a whole (no entries, more than `max_batch_entries`) fails the RPC with
  INVALID_ARGUMENT and stores nothing.
- atomic = true: all entries stored or none. Entries that fail validation carry their
  error and the others ABORTED; a batch JetStream refuses gives every entry that error.
  All entries must route to one stream with allow_atomic.

Preconditions in an atomic batch (JetStream's rule, jetstream_batching.go) are checked
against the stream as it was before the batch, not as the batch is applied. So a batch
cannot expect a sequence of a subject it writes itself: an entry whose
`expected_last_subject_sequence` names a subject an earlier entry writes, an
`expected_last_sequence` on any but the first entry, and `expected_last_event_id` (not
supported in batches) are INVALID_ARGUMENT naming the entries, as are two entries with one
event id; nothing is sent. `expected_last_key_sequence` of several entries of one key all
expect the key's sequence before the batch. A precondition that does not hold is
FAILED_PRECONDITION for every entry, its SequenceConflict describing the first entry whose
precondition does not hold, with the actual sequence read after the refusal.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TypeAlias

import grpc
from google.rpc import status_pb2

from gateway.config import GatewayConfig
from gateway.errors import (
    PRECONDITION_ERRORS,
    FieldViolation,
    RpcAbort,
    abort,
    aborted,
    bad_request,
    failure_status,
    make_status,
)
from gateway.publisher import Outcome, Publisher, PublishFailure, Stored
from gateway.read import Reader
from gateway.security import Caller, ListenerSecurity
from gateway.subscribe import Subscriptions
from gateway.telemetry import PublishTelemetry
from gateway.validation import PreparedEvent, Validator, atomic_batch_problems, outbound
from jetgate import wire
from jetgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc

Context = grpc.aio.ServicerContext[object, object]
# An entry as prepared: the event to send, its violations, or a refusal (PERMISSION_DENIED).
Prepared: TypeAlias = PreparedEvent | list[FieldViolation] | status_pb2.Status
# Reads of actual sequences to explain one refused atomic batch (bounds the cost of a
# batch of many entries with preconditions).
MAX_CONFLICT_LOOKUPS = 32


class EventGatewayServicer(gateway_pb2_grpc.EventGatewayServicer):
    """Validates publish requests and stores them in JetStream through `publisher`."""

    def __init__(
        self,
        *,
        config: GatewayConfig,
        validator: Validator,
        publisher: Publisher,
        telemetry: PublishTelemetry,
        security: ListenerSecurity,
        subscriptions: Subscriptions,
        reader: Reader,
    ):
        self._subscriptions = subscriptions
        self._reader = reader
        self._config = config
        self._validator = validator
        self._publisher = publisher
        self._telemetry = telemetry
        self._security = security

    async def Publish(
        self, request: gateway_pb2.PublishRequest, context: Context
    ) -> gateway_pb2.PublishResponse:
        prepared = self._prepare(request, self._security.caller())
        if not isinstance(prepared, PreparedEvent):
            await abort(context, _refusal(prepared))
        (outcome,) = await self._publish([prepared], self._publish_within(context), context)
        result = _result(prepared, await self._settle_conflict(prepared, outcome))
        if result.HasField("error"):
            await abort(context, result.error)
        return result.ok

    async def PublishBatch(
        self, request: gateway_pb2.PublishBatchRequest, context: Context
    ) -> gateway_pb2.PublishBatchResponse:
        try:
            within = self._publish_within(context)
            return await self._publish_batch(request, self._security.caller(), within, context)
        except RpcAbort as exc:
            await abort(context, exc.status)

    async def Subscribe(
        self, request_iterator: AsyncIterator[gateway_pb2.SubscribeRequest], context: Context
    ) -> AsyncIterator[gateway_pb2.SubscribeResponse]:
        # An async generator (not a returned iterator): the tracing interceptor iterates it.
        async for response in self._subscriptions.serve(request_iterator, context):
            yield response

    async def Read(
        self, request: gateway_pb2.ReadRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.ReadResponse]:
        async for response in self._reader.read(request, context):
            yield response

    async def PublishStream(
        self, request_iterator: AsyncIterator[gateway_pb2.PublishBatchRequest], context: Context
    ) -> AsyncIterator[gateway_pb2.PublishBatchResponse]:
        # At most `stream_window` request messages are in flight (read, not yet answered);
        # their results are yielded strictly in request order.
        slots = asyncio.Semaphore(self._config.stream_window)
        caller = self._security.caller()
        in_flight: asyncio.Queue[asyncio.Task[gateway_pb2.PublishBatchResponse] | None]
        in_flight = asyncio.Queue()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    timeout = self._publish_within(context)
                    await slots.acquire()
                    in_flight.put_nowait(
                        asyncio.ensure_future(
                            self._publish_batch(request, caller, timeout, context)
                        )
                    )
            finally:
                in_flight.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (task := await in_flight.get()) is not None:
                try:
                    response = await task
                except RpcAbort as exc:
                    await abort(context, exc.status)
                slots.release()
                yield response
            await reader  # surfaces a failed read
        finally:
            reader.cancel()
            while not in_flight.empty():
                if (task := in_flight.get_nowait()) is not None:
                    task.cancel()

    async def _publish(
        self, events: Sequence[PreparedEvent], within: float, context: Context
    ) -> list[Outcome]:
        """Store `events` independently: one outcome each, in order."""
        trace = self._telemetry.start(events, context)
        messages = outbound(events, trace.headers)
        try:
            outcomes = await self._publisher.publish(messages, within=within)
        except BaseException as exc:  # cancelled with the RPC: the spans still end
            trace.fail(exc)
            raise
        trace.end(outcomes)
        return outcomes

    async def _publish_all(
        self, events: Sequence[PreparedEvent], within: float, context: Context
    ) -> list[Stored] | PublishFailure:
        """Store all of `events` as one atomic batch, or none."""
        trace = self._telemetry.start(events, context)
        messages = outbound(events, trace.headers)
        try:
            stored = await self._publisher.publish_atomic(messages, within=within)
        except BaseException as exc:
            trace.fail(exc)
            raise
        trace.end(stored)
        return stored

    def _prepare(
        self,
        request: gateway_pb2.PublishRequest,
        caller: Caller,
        field: str = "",
        *,
        atomic: bool = False,
    ) -> Prepared:
        """The entry validated, after the policy allowed its caller to publish its type.

        The policy comes first: a caller learns nothing about the validity of events it may
        not publish. Without a type there is nothing to authorize; validation refuses it.
        """
        type_url = request.event.payload.type_url
        if type_url and (denial := caller.publish_denial(wire.type_from_url(type_url))):
            return denial
        return self._validator.prepare(request, field, atomic=atomic, principal=caller.name)

    async def _publish_batch(
        self,
        request: gateway_pb2.PublishBatchRequest,
        caller: Caller,
        within: float,
        context: Context,
    ) -> gateway_pb2.PublishBatchResponse:
        count = len(request.entries)
        if not 1 <= count <= self._config.max_batch_entries:
            raise RpcAbort(
                bad_request(
                    [("entries", f"{count} entries; send 1 to {self._config.max_batch_entries}")]
                )
            )
        atomic = request.atomic
        prepared = [
            self._prepare(e, caller, f"entries[{i}]", atomic=atomic)
            for i, e in enumerate(request.entries)
        ]
        if atomic:
            results = await self._publish_atomic(prepared, within, context)
            return gateway_pb2.PublishBatchResponse(results=results)
        return await self._publish_each(prepared, within, context)

    async def _publish_each(
        self,
        prepared: Sequence[Prepared],
        within: float,
        context: Context,
    ) -> gateway_pb2.PublishBatchResponse:
        valid = [p for p in prepared if isinstance(p, PreparedEvent)]
        sent = await self._publish(valid, within, context) if valid else []
        outcomes = iter(
            [
                o if isinstance(o, Stored) else await self._settle_conflict(p, o)
                for p, o in zip(valid, sent, strict=True)
            ]
        )
        # Results are filled in place: building each and copying it in costs twice as much.
        response = gateway_pb2.PublishBatchResponse()
        add = response.results.add
        for p in prepared:
            if isinstance(p, PreparedEvent):
                _fill(add(), p, next(outcomes))
            else:
                add().error.CopyFrom(_refusal(p))
        return response

    async def _publish_atomic(
        self,
        prepared: Sequence[Prepared],
        within: float,
        context: Context,
    ) -> list[gateway_pb2.PublishResult]:
        valid = [p for p in prepared if isinstance(p, PreparedEvent)]
        if len(valid) == len(prepared) and (clashes := atomic_batch_problems(valid)):
            prepared = [clashes.get(i, p) for i, p in enumerate(valid)]
            valid = []
        streams = sorted({p.stream for p in valid})
        if len(valid) < len(prepared):
            cause, refused = next(
                (i, p) for i, p in enumerate(prepared) if not isinstance(p, PreparedEvent)
            )
            why = "is invalid" if isinstance(refused, list) else "may not be published"
            return [
                gateway_pb2.PublishResult(
                    error=aborted(f"atomic batch not stored: entries[{cause}] {why}")
                    if isinstance(p, PreparedEvent)
                    else _refusal(p)
                )
                for p in prepared
            ]
        if len(streams) > 1:
            return _all_failed(
                len(prepared),
                bad_request(
                    [("entries", f"an atomic batch must target one stream, not {streams}")]
                ),
            )
        if not self._validator.stream(streams[0]).allow_atomic:
            return _all_failed(
                len(prepared),
                make_status(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"stream {streams[0]} does not allow atomic batches (allow_atomic = false)",
                ),
            )

        stored = await self._publish_all(valid, within, context)
        if isinstance(stored, PublishFailure):
            conflict = next((p.conflict for p in valid if p.conflict is not None), None)
            if stored.err_code in PRECONDITION_ERRORS:
                conflict = await self._failed_precondition(valid) or conflict
            return _all_failed(len(prepared), failure_status(stored, conflict))
        return [_result(p, s) for p, s in zip(valid, stored, strict=True)]

    async def _failed_precondition(
        self, events: Sequence[PreparedEvent]
    ) -> event_pb2.SequenceConflict | None:
        """The first precondition of an atomic batch that does not hold, with its actual value.

        JetStream's refusal names no entry, and for some conflicts no actual sequence: read
        each precondition's actual value in entry order (at most MAX_CONFLICT_LOOKUPS).
        None when every one holds now (the stream changed since).
        """
        lookups = 0
        for event in events:
            conflict = event.conflict
            if conflict is None or conflict.condition == "expected_last_event_id":
                continue
            if (lookups := lookups + 1) > MAX_CONFLICT_LOOKUPS:
                break
            actual = await self._publisher.last_sequence(event.stream, conflict.subject)
            if actual is not None and actual != conflict.expected_sequence:
                found = event_pb2.SequenceConflict()
                found.CopyFrom(conflict)
                found.actual_sequence = actual
                return found
        return None

    async def _settle_conflict(
        self, prepared: PreparedEvent, outcome: Stored | PublishFailure
    ) -> Stored | PublishFailure:
        """Turn a precondition failure caused by a retry of a stored event into a duplicate.

        JetStream checks preconditions before de-duplication, so resending a stored event
        with its precondition fails. When the last message on the event's subject carries
        the same event id, the event is stored: answer as a duplicate, like a plain retry.
        """
        if (
            not isinstance(outcome, PublishFailure)
            or outcome.err_code not in PRECONDITION_ERRORS
            or not prepared.client_id
        ):
            return outcome
        last = await self._publisher.last_stored_id(prepared.stream, prepared.subject)
        if last is None or last[1] != prepared.event_id:
            return outcome
        return Stored(stream=prepared.stream, sequence=last[0], duplicate=True)

    def _publish_within(self, context: Context) -> float:
        """Seconds a publish may take: publish_timeout, or less when the call's deadline is."""
        remaining = context.time_remaining()
        timeout = self._config.publish_timeout
        return timeout if remaining is None else max(0.0, min(timeout, remaining))


def _refusal(prepared: list[FieldViolation] | status_pb2.Status) -> status_pb2.Status:
    return bad_request(prepared) if isinstance(prepared, list) else prepared


def _result(prepared: PreparedEvent, outcome: Stored | PublishFailure) -> gateway_pb2.PublishResult:
    result = gateway_pb2.PublishResult()
    _fill(result, prepared, outcome)
    return result


def _fill(
    result: gateway_pb2.PublishResult, prepared: PreparedEvent, outcome: Stored | PublishFailure
) -> None:
    if isinstance(outcome, PublishFailure):
        result.error.CopyFrom(failure_status(outcome, prepared.conflict))
        return
    ok = result.ok
    ok.event_id = prepared.event_id
    ok.stream = outcome.stream
    ok.subject = prepared.subject
    ok.sequence = outcome.sequence
    ok.duplicate = outcome.duplicate


def _all_failed(count: int, status: status_pb2.Status) -> list[gateway_pb2.PublishResult]:
    return [gateway_pb2.PublishResult(error=status) for _ in range(count)]
