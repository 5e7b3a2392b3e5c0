"""The properties every fuzz example must keep, checked against the live gateway.

For each request entry the answer is an `Answer` (a status code and, when OK, the
PublishResponse; else the google.rpc.Status). The properties:
- the code is one a correct gateway can give for that entry: never UNKNOWN, INTERNAL,
  UNAVAILABLE or DEADLINE_EXCEEDED (the gateway is healthy and JetStream is local);
  INVALID_ARGUMENT always with a google.rpc.BadRequest; FAILED_PRECONDITION only for a
  precondition, with a SequenceConflict whose actual value differs from the expected one;
  ABORTED only in an atomic batch; ALREADY_EXISTS only for an atomic batch holding an id
  acknowledged before;
- an atomic batch is stored whole or not at all;
- a refusal stores nothing: the stream's last sequence grows by exactly the number of OKs
  that are not duplicates;
- an OK is stored exactly as sent: subject, payload bytes, every user header byte for byte
  (raw header block from `$JS.API.STREAM.MSG.GET`), the CloudEvents attributes as the wire
  contract writes them (jetgate/wire.py: values percent-encoded per the NATS binding,
  compared decoded with `wire.attribute_value`; `ce-dataschema` is `wire.data_schema`,
  `ce-datacontenttype` protobuf; an accepted `source` is a URI-reference); and a worker of
  a consumer group gets the same event (the parsed payload), key, source and headers;
- the gateway is SERVING afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2

from gateway.validation import MAX_SOURCE_LENGTH
from jetgate import wire
from jetgate.v1 import event_pb2, gateway_pb2
from tests.fuzz.live import ROUTED_TYPES, STREAM, LiveGateway, StoredMessage
from tests.fuzz.strategies import MAX_PAYLOAD
from tests.support.eventually import eventually

NEVER = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    code: grpc.StatusCode
    ok: gateway_pb2.PublishResponse | None = None
    status: status_pb2.Status | None = None


def rpc_error_status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc.Status of a failed RPC (from its details trailer, else code + text)."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return status_pb2.Status(code=error.code().value[0], message=error.details() or "")


def from_result(result: gateway_pb2.PublishResult) -> Answer:
    if result.HasField("ok"):
        return Answer(code=grpc.StatusCode.OK, ok=result.ok)
    return Answer(code=CODES[result.error.code], status=result.error)


def from_error(error: grpc.aio.AioRpcError) -> Answer:
    return Answer(code=error.code(), status=rpc_error_status(error))


M = TypeVar("M", error_details_pb2.BadRequest, event_pb2.SequenceConflict)


def _detail(status: status_pb2.Status | None, kind: type[M]) -> M | None:
    for item in status.details if status is not None else ():
        found = kind()
        if item.Unpack(found):
            return found
    return None


def check_code(
    answer: Answer,
    entry: gateway_pb2.PublishRequest,
    entries: Sequence[gateway_pb2.PublishRequest],
    *,
    atomic: bool,
    acknowledged: set[str],
) -> None:
    """The answer's code is one a correct gateway gives for `entry` of this request."""
    code, status = answer.code, answer.status
    where = f"{code.name}: {status.message if status else ''!r}"
    assert code not in NEVER, where
    if (rule := broken_rule(entry)) is not None:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{rule}, answered {where}"
    if code == grpc.StatusCode.OK:
        return
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert _detail(status, error_details_pb2.BadRequest) is not None, f"no BadRequest: {where}"
        return
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        scope = entries if atomic else [entry]
        assert any(e.HasField("precondition") for e in scope), f"no precondition sent: {where}"
        conflict = _detail(status, event_pb2.SequenceConflict)
        if conflict is None:  # atomic batch to a stream without allow_atomic: not here
            raise AssertionError(f"no SequenceConflict: {where}")
        if conflict.condition == "expected_last_event_id":
            assert conflict.actual_event_id != conflict.expected_event_id, where
        else:
            assert conflict.actual_sequence != conflict.expected_sequence, (where, conflict)
        return
    if code == grpc.StatusCode.ABORTED:
        assert atomic, where
        return
    if code == grpc.StatusCode.ALREADY_EXISTS:
        assert atomic, where
        assert any(e.event.id in acknowledged for e in entries), f"no id stored before: {where}"
        return
    raise AssertionError(f"unexpected {where}")


def broken_rule(entry: gateway_pb2.PublishRequest) -> str | None:
    """A rule of the contract `entry` alone breaks (its refusal is then INVALID_ARGUMENT,
    in an atomic batch too: the other entries are ABORTED), or None. Stated with wire's
    rules; the gateway's validation is not consulted."""
    if not entry.HasField("event"):
        return "no event"
    event = entry.event
    source = event.source  # empty: the gateway's default, a valid one
    problems = [
        wire.key_problem(event.key),
        wire.event_id_problem(event.id),
        source and wire.header_value_problem("source", source, MAX_SOURCE_LENGTH),
        source and wire.uri_reference_problem("source", source),
        *(wire.header_problem(name, value) for name, value in event.headers.items()),
        *(
            wire.header_value_problem(name, value)
            if name in wire.TRACE_HEADERS
            else f"trace_context name {name!r}"
            for name, value in entry.trace_context.items()
        ),
        wire.ttl_problem(event.ttl.seconds, event.ttl.nanos) if event.HasField("ttl") else None,
    ]
    if wire.encoded_headers_size(dict(event.headers)) > wire.MAX_HEADERS_SIZE:
        problems.append("user headers over JetStream's 64 KiB")
    return next((p for p in problems if p), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Exchange:
    """One request message and its answers, one per entry (a lone Publish: one entry)."""

    entries: Sequence[gateway_pb2.PublishRequest]
    answers: Sequence[Answer]
    atomic: bool = False


async def check_example(
    live: LiveGateway, exchanges: Sequence[Exchange], *, before: int
) -> list[str]:
    """Every property of one example (its request messages and their answers).

    `before`: the stream's last sequence before the example was sent. Returns labels of
    what the example covered, for hypothesis' statistics (`hypothesis.event`).
    """
    oks = [
        (entry, answer.ok)
        for exchange in exchanges
        for entry, answer in zip(exchange.entries, exchange.answers, strict=True)
        if answer.ok is not None
    ]
    # An atomic batch may meet an id acknowledged earlier in this same example.
    acknowledged = live.acknowledged | {ok.event_id for _, ok in oks}
    for exchange in exchanges:
        assert len(exchange.answers) == len(exchange.entries)
        for entry, answer in zip(exchange.entries, exchange.answers, strict=True):
            check_code(
                answer,
                entry,
                exchange.entries,
                atomic=exchange.atomic,
                acknowledged=acknowledged,
            )
        if exchange.atomic:
            stored = sum(answer.ok is not None for answer in exchange.answers)
            assert stored in (0, len(exchange.entries)), [a.code.name for a in exchange.answers]
    new = [(entry, ok) for entry, ok in oks if not ok.duplicate]
    after = await live.last_sequence()
    assert after - before == len(new), f"{after - before} stored, {len(new)} acknowledged"
    assert len({ok.sequence for _, ok in new}) == len(new), "two OKs with one sequence"
    for entry, ok in oks:
        await check_stored(live, entry, ok, fresh=not ok.duplicate, before=before)
        live.acknowledged.add(ok.event_id)
    for entry, ok in new:
        await check_handled(live, entry, ok)
    status = await live.health()
    assert status == health_pb2.HealthCheckResponse.SERVING, f"health {status} after the example"
    return coverage(exchanges, live.max_payload)


def coverage(exchanges: Sequence[Exchange], max_payload: int) -> list[str]:
    """What the example exercised: answer codes, and the edges it came near."""
    labels: set[str] = set()
    for exchange in exchanges:
        for entry, answer in zip(exchange.entries, exchange.answers, strict=True):
            labels.add(f"answer {answer.code.name}" + (" (atomic)" if exchange.atomic else ""))
            event = entry.event
            if answer.ok is not None and answer.ok.duplicate:
                labels.add("OK duplicate")
            if abs(max_payload - event.ByteSize()) < 2048:
                labels.add(f"size within 2 KiB of max_payload: {answer.code.name}")
            if any(not v.isascii() for v in event.headers.values()):
                labels.add(f"non-ASCII header value: {answer.code.name}")
            if sum(len(v) for v in event.headers.values()) > 60_000:
                labels.add(f"headers over 60 KB: {answer.code.name}")
            if entry.trace_context:
                valid = TRACEPARENT.match(entry.trace_context.get("traceparent", ""))
                labels.add(
                    f"trace_context ({'valid' if valid else 'no valid'} traceparent): "
                    f"{answer.code.name}"
                )
            if entry.HasField("precondition"):
                labels.add(f"precondition: {answer.code.name}")
    return sorted(labels)


def user_headers(pairs: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return sorted((k, v) for k, v in pairs if not wire.is_reserved_header(k.decode()))


def sent_headers(event: event_pb2.Event) -> list[tuple[bytes, bytes]]:
    return sorted((k.encode(), v.encode()) for k, v in event.headers.items())


def attribute(stored: StoredMessage, name: str) -> str | None:
    """The CloudEvents attribute `name` of a stored message, decoded (None: no header)."""
    value = stored.header(name)
    return None if value is None else wire.attribute_value(value)


async def check_stored(
    live: LiveGateway,
    entry: gateway_pb2.PublishRequest,
    ok: gateway_pb2.PublishResponse,
    *,
    fresh: bool,
    before: int,
) -> None:
    """The stored message at the OK's sequence is the event as sent."""
    event = entry.event
    assert ok.stream == STREAM
    if event.id:
        assert ok.event_id == event.id
    if fresh:
        assert ok.sequence > before, (ok.sequence, before)
    stored = await live.stored(ok.sequence)
    assert stored is not None, f"OK sequence {ok.sequence} is not in the stream"
    assert attribute(stored, wire.CE_ID) == ok.event_id
    assert stored.header(wire.MSG_ID) == ok.event_id
    if not fresh:  # the original is stored: this request's content was not
        return
    name = wire.type_from_url(event.payload.type_url)
    assert stored.subject == ok.subject == wire.subject("orders", name, event.key)
    assert stored.data == event.payload.value
    assert user_headers(stored.headers) == sent_headers(event)
    # CloudEvents attributes: values percent-encoded by the NATS binding (decoded here), the
    # dataschema an absolute URI, the content type protobuf (issue 15, jetgate/wire.py).
    assert attribute(stored, wire.CE_SPECVERSION) == wire.SPEC_VERSION
    assert attribute(stored, wire.CE_TYPE) == name
    assert attribute(stored, wire.CE_SUBJECT) == event.key
    assert live.config is not None
    source = event.source or live.config.source  # the gateway's default for events without
    assert attribute(stored, wire.CE_SOURCE) == source
    assert stored.header(wire.CE_SOURCE) == wire.header_attribute(source), "encoded as sent"
    assert wire.uri_reference_problem("source", source) is None, f"accepted source {source!r}"
    assert attribute(stored, wire.CE_DATASCHEMA) == wire.data_schema(name)
    assert attribute(stored, wire.CE_DATACONTENTTYPE) == wire.CONTENT_TYPE_PROTOBUF
    assert stored.header(wire.CONTENT_TYPE) == wire.CONTENT_TYPE_PROTOBUF
    if event.HasField("time"):
        moment = wire.format_time(event.time.ToDatetime(tzinfo=UTC))
        assert attribute(stored, wire.CE_TIME) == moment
    ttl = str(event.ttl.seconds) if event.HasField("ttl") else None
    assert stored.header(wire.TTL) == ttl
    check_trace_context(entry, stored)


def check_trace_context(entry: gateway_pb2.PublishRequest, stored: StoredMessage) -> None:
    """An accepted entry's own trace context has only W3C names with values NATS can carry;
    a valid traceparent of it is the trace the stored event continues (the gateway's span,
    when tracing is on, is a child of it: same trace id). Trace headers are left out only
    when they do not fit under the size limits."""
    own = dict(entry.trace_context)
    assert set(own) <= set(wire.TRACE_HEADERS), f"accepted trace_context {sorted(own)}"
    for name, value in own.items():
        assert wire.header_value_problem(name, value) is None, f"accepted {name}: {value!r}"
    sent = TRACEPARENT.match(own.get("traceparent", ""))
    if sent is None:
        return
    stored_parent = stored.header("traceparent")
    if stored_parent is None:
        needed, room = wire.encoded_headers_size(own), room_about(entry)
        assert room < needed, f"trace headers ({needed} bytes) left out, about {room} to spare"
        return
    got = TRACEPARENT.match(stored_parent)
    assert got is not None, f"stored traceparent {stored_parent!r}"
    assert got["trace"] == sent["trace"], (stored_parent, own)


# A valid W3C traceparent (version 00): trace id and parent id not all zeros.
TRACEPARENT = re.compile(
    r"^00-(?P<trace>(?!0{32})[0-9a-f]{32})-(?P<parent>(?!0{16})[0-9a-f]{16})-[0-9a-f]{2}$"
)


def room_about(entry: gateway_pb2.PublishRequest) -> int:
    """About how many bytes the entry's message could still grow by under the size limits
    (at least: 1 KiB counted for the headers the gateway adds, which take less)."""
    event = entry.event
    headers = wire.encoded_headers_size(dict(event.headers))
    return min(MAX_PAYLOAD - event.ByteSize(), wire.MAX_HEADERS_SIZE - headers) - 1024


async def check_handled(
    live: LiveGateway, entry: gateway_pb2.PublishRequest, ok: gateway_pb2.PublishResponse
) -> None:
    """A worker of consumer group `fuzz` got the payload and headers as sent."""

    def handled() -> None:
        assert ok.sequence in live.handled, f"sequence {ok.sequence} not handled yet"

    await eventually(handled, what=f"the worker handling sequence {ok.sequence}")
    got = live.handled[ok.sequence]
    assert got.event_id == ok.event_id
    event = entry.event
    assert got.event_type == wire.type_from_url(event.payload.type_url)
    sent = ROUTED_TYPES[got.event_type].FromString(event.payload.value)
    assert got.data == sent.SerializeToString(deterministic=True), "payload as the worker got it"
    assert got.headers == dict(event.headers), "headers as the worker got them"
    assert live.config is not None
    assert (got.key, got.source) == (event.key, event.source or live.config.source)
