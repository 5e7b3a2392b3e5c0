"""Turns one PublishRequest into a validated event, or the field violations it has.

Everything is checked before anything is sent: type registered and routed, payload parses
as its type, key, id, source (a URI-reference: CloudEvents SDKs refuse any other), headers,
time, ttl, precondition, and size. Output-only Event fields (stream, subject, sequence) are
ignored on input.

Size: nats-server closes the connection of a client that sends a message over its
max_payload, and JetStream refuses a header block over 64 KiB, so no accepted event may
grow past either once sent. Every header the gateway adds on the event's path is counted
when the event is checked: the envelope, `Nats-Msg-Id`, `Nats-TTL` and the precondition's
expectation headers are encoded here; the atomic batch headers (`prepare(atomic=True)`) are
reserved at their largest. What is left (`PreparedEvent.room`) is where trace headers may
go (`outbound`); trace headers that do not fit are left out, never the event.

Trace context per entry (`PublishRequest.trace_context`, set by batching clients whose
events of different traces share a request): only the W3C names (`traceparent`,
`tracestate`, `baggage`) with values NATS can carry; kept on the event
(`PreparedEvent.trace_context`) for `gateway.telemetry`, which parents the event's span on
it. A malformed `traceparent` is ignored, as W3C asks (the call's context applies).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.config import StreamConfig
from gateway.errors import FieldViolation
from gateway.publisher import OutboundMessage
from gateway.registry import PayloadError, TypeRegistry
from gateway.routing import Route, Router
from jetgate import wire
from jetgate.v1 import event_pb2, gateway_pb2

log = logging.getLogger("jetgate.gateway")

MAX_SOURCE_LENGTH = 1024


@dataclass(slots=True, kw_only=True)  # not frozen: cheaper to build; never changed
class PreparedEvent:
    """A validated event: what its NATS message is built from, and what replies need."""

    event_id: str
    # Whether the client chose the id (only such an event can be a retry).
    client_id: bool
    event_type: str
    key: str
    stream: str
    subject: str
    payload: bytes
    # Every header but the trace headers (never changed: `outbound` copies when it adds).
    headers: dict[str, str]
    # The precondition it carries, as a conflict skeleton (None: no precondition).
    conflict: event_pb2.SequenceConflict | None
    # Bytes its headers may still grow by under every size limit: room for trace headers.
    room: int = 0
    # The entry's own W3C trace context (None: the call's context applies).
    trace_context: Mapping[str, str] | None = None


def outbound(
    events: Sequence[PreparedEvent], trace: Sequence[Mapping[str, str]] | None
) -> list[OutboundMessage]:
    """The NATS messages of `events`, each with its trace headers (`trace[i]`, None: none).

    Trace headers go only where they fit in the event's room: tracing is never why a
    publish fails. (A client's large tracestate or baggage is what could exceed it.)
    """
    if trace is None:
        return [
            OutboundMessage(
                subject=e.subject,
                payload=e.payload,
                headers=e.headers,
                stream=e.stream,
                batchable=_batchable(e, e.room),
            )
            for e in events
        ]
    messages = []
    for event, extra in zip(events, trace, strict=True):
        headers = event.headers
        room = event.room
        if extra:
            if (size := wire.encoded_headers_size(extra) - wire.EMPTY_HEADERS_SIZE) <= room:
                headers = {**headers, **extra}
                room -= size
            else:
                log.warning(
                    "event %s: trace headers left out (%d bytes left under the size limits)",
                    *(event.event_id, event.room),
                )
        messages.append(
            OutboundMessage(
                subject=event.subject,
                payload=event.payload,
                headers=headers,
                stream=event.stream,
                batchable=_batchable(event, room),
            )
        )
    return messages


def _batchable(event: PreparedEvent, room: int) -> bool:
    """Whether `event` (`room` bytes left under its limits) may share a group-commit batch:
    no precondition (each is checked against the stream as it was before a batch), and
    room for the atomic batch headers."""
    return event.conflict is None and room >= wire.ATOMIC_BATCH_HEADERS_SIZE


class Validator:
    """Validates and encodes publish requests against the registry, routes and streams."""

    def __init__(
        self,
        *,
        registry: TypeRegistry,
        router: Router,
        streams: dict[str, StreamConfig],
        default_source: str,
        max_payload: Callable[[], int],
    ) -> None:
        self._registry = registry
        self._router = router
        self._streams = streams
        self._default_source = default_source
        self._max_payload = max_payload
        # Type URL -> full name and route, for the types found registered and routed.
        self._resolved: dict[str, tuple[str, Route]] = {}

    def stream(self, name: str) -> StreamConfig:
        return self._streams[name]

    def prepare(
        self,
        request: gateway_pb2.PublishRequest,
        field: str = "",
        *,
        atomic: bool = False,
        principal: str | None = None,
    ) -> PreparedEvent | list[FieldViolation]:
        """The validated event of `request`, or its violations (field paths under `field`).

        `atomic`: the event is an entry of an atomic batch (room for the batch headers).
        `principal`: the authenticated caller, stored as `Jetgate-Principal` (and counted in
        the size like every header).
        """
        at = f"{field}." if field else ""
        if not request.HasField("event"):
            return [(f"{at}event", "event is required")]
        event = request.event
        bad: list[FieldViolation] = []

        payload = event.payload
        resolved = self._resolved.get(payload.type_url)
        if resolved is not None:
            full_name, route = resolved
        else:
            full_name, route = wire.type_from_url(payload.type_url), None
            if not event.HasField("payload") or not payload.type_url:
                bad.append((f"{at}event.payload", "payload (a google.protobuf.Any) is required"))
            elif full_name not in self._registry:
                bad.append((f"{at}event.payload.type_url", f"unknown event type {full_name!r}"))
            elif (route := self._router.route(full_name)) is None:
                bad.append(
                    (f"{at}event.payload.type_url", f"no route for event type {full_name!r}")
                )
            else:
                self._resolved[payload.type_url] = (full_name, route)
        data = payload.value
        if route is not None:
            try:
                self._registry.parse(full_name, data)
            except PayloadError as exc:
                bad.append((f"{at}event.payload.value", str(exc)))

        if problem := wire.key_problem(event.key):
            bad.append((f"{at}event.key", problem))
        if problem := wire.event_id_problem(event.id):
            bad.append((f"{at}event.id", problem))
        source = event.source or self._default_source
        # CloudEvents `source`: a URI-reference (the length and header rules come first).
        if problem := wire.header_value_problem(
            "source", source, MAX_SOURCE_LENGTH
        ) or wire.uri_reference_problem("source", source):
            bad.append((f"{at}event.source", problem))
        user_headers = event.headers
        for name, value in sorted(user_headers.items()) if user_headers else ():
            if problem := wire.header_problem(name, value):
                bad.append((f"{at}event.headers[{name!r}]", problem))
        trace_context = request.trace_context
        for name, value in sorted(trace_context.items()) if trace_context else ():
            if name not in wire.TRACE_HEADERS:
                bad.append(
                    (f"{at}trace_context[{name!r}]", "only traceparent, tracestate, baggage")
                )
            elif problem := wire.header_value_problem(f"trace context {name!r}", value):
                bad.append((f"{at}trace_context[{name!r}]", problem))
        moment = None
        if event.HasField("time"):
            try:
                moment = event.time.ToDatetime(tzinfo=UTC)
            except (ValueError, OverflowError) as exc:
                bad.append((f"{at}event.time", f"not a valid timestamp: {exc}"))
        ttl = None
        stream = self._streams[route.stream] if route else None
        if event.HasField("ttl"):
            ttl = event.ttl.seconds
            if problem := wire.ttl_problem(ttl, event.ttl.nanos):
                bad.append((f"{at}event.ttl", problem))
            elif stream is not None and not stream.allow_msg_ttl:
                bad.append(
                    (f"{at}event.ttl", f"stream {stream.name} does not allow per-message TTL")
                )
        if bad or route is None or stream is None:
            return bad

        event_id = event.id or wire.new_event_id()
        subject = wire.subject(route.subject_prefix, full_name, event.key)
        envelope = wire.Envelope(
            id=event_id,
            type=full_name,
            source=source,
            key=event.key,
            time=moment or datetime.now(UTC),
            headers=dict(user_headers) if user_headers else {},
            ttl_seconds=ttl,
            principal=principal,
        )
        expectations = None
        conflict = None
        if request.HasField("precondition"):
            checked, conflict = _precondition(request, at, subject, route.subject_prefix, event)
            if isinstance(checked, list):
                return checked
            expectations = checked
        headers = wire.encode_headers(envelope, expectations=expectations)
        header_size = wire.encoded_headers_size(headers)
        if atomic:
            header_size += wire.ATOMIC_BATCH_HEADERS_SIZE
        size = len(data) + header_size
        limit = self._max_payload()
        if stream.max_msg_size > 0:
            limit = min(limit, stream.max_msg_size)
        if size > limit or header_size > wire.MAX_HEADERS_SIZE:
            return [_size_violation(at, size, limit, header_size, atomic)]
        return PreparedEvent(
            event_id=event_id,
            client_id=bool(event.id),
            event_type=full_name,
            key=event.key,
            stream=route.stream,
            subject=subject,
            payload=data,
            headers=headers,
            conflict=conflict,
            room=min(limit - size, wire.MAX_HEADERS_SIZE - header_size),
            trace_context=dict(trace_context) if trace_context else None,
        )


def _size_violation(
    at: str, size: int, limit: int, header_size: int, atomic: bool
) -> FieldViolation:
    batch = (
        f" (with {wire.ATOMIC_BATCH_HEADERS_SIZE} bytes of atomic batch headers)" if atomic else ""
    )
    if header_size > wire.MAX_HEADERS_SIZE:
        return (
            f"{at}event.headers",
            f"the event's headers take {header_size} bytes{batch}; "
            f"JetStream takes at most {wire.MAX_HEADERS_SIZE}",
        )
    return (
        f"{at}event.payload",
        f"the event takes {size} bytes with its headers{batch}; the limit is {limit}",
    )


def _precondition(
    request: gateway_pb2.PublishRequest,
    at: str,
    subject: str,
    prefix: str,
    event: event_pb2.Event,
) -> tuple[dict[str, str] | list[FieldViolation], event_pb2.SequenceConflict | None]:
    pre = request.precondition
    which = pre.WhichOneof("condition") if request.HasField("precondition") else None
    if which is None:
        return {}, None
    conflict = event_pb2.SequenceConflict(condition=which)
    if which == "expected_last_subject_sequence":
        conflict.subject = subject
        conflict.expected_sequence = pre.expected_last_subject_sequence
        return {wire.EXPECTED_LAST_SUBJECT_SEQUENCE: str(conflict.expected_sequence)}, conflict
    if which == "expected_last_key_sequence":
        conflict.subject = wire.key_filter(prefix, event.key)
        conflict.expected_sequence = pre.expected_last_key_sequence
        return {
            wire.EXPECTED_LAST_SUBJECT_SEQUENCE: str(conflict.expected_sequence),
            wire.EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: conflict.subject,
        }, conflict
    if which == "expected_last_sequence":
        conflict.expected_sequence = pre.expected_last_sequence
        return {wire.EXPECTED_LAST_SEQUENCE: str(conflict.expected_sequence)}, conflict
    expected_id = pre.expected_last_event_id
    if problem := wire.event_id_problem(expected_id) or (
        None if expected_id else "use expected_last_sequence = 0 for 'nothing stored yet'"
    ):
        return [(f"{at}precondition.expected_last_event_id", problem)], None
    conflict.expected_event_id = expected_id
    return {wire.EXPECTED_LAST_MSG_ID: expected_id}, conflict


def atomic_batch_problems(events: Sequence[PreparedEvent]) -> dict[int, list[FieldViolation]]:
    """Why entries of one atomic batch (valid each, in request order) cannot go together.

    Entry index -> its violations. JetStream refuses such a batch with an error that does not
    say which entries clash (and for a repeated id one that reads "already stored"):
    - two entries with one event id;
    - `expected_last_subject_sequence` on a subject an earlier entry of the batch writes
      (preconditions are checked against the stream as it was before the batch: JetStream
      cannot check one on a subject the batch itself has written);
    - `expected_last_sequence` on any entry but the first (the same reason, stream-wide);
    - `expected_last_event_id` (JetStream does not support it in a batch).
    """
    bad: dict[int, list[FieldViolation]] = {}
    first_with_id: dict[str, int] = {}
    first_on_subject: dict[str, int] = {}
    for index, event in enumerate(events):
        at = f"entries[{index}]"
        if (earlier := first_with_id.setdefault(event.event_id, index)) != index:
            why = f"entries[{earlier}] and {at} have the same id {event.event_id!r}"
            bad.setdefault(earlier, []).append((f"entries[{earlier}].event.id", why))
            bad.setdefault(index, []).append((f"{at}.event.id", why))
        condition = event.conflict.condition if event.conflict is not None else ""
        field = f"{at}.precondition.{condition}"
        if condition == "expected_last_subject_sequence":
            if (earlier := first_on_subject.get(event.subject, index)) != index:
                bad.setdefault(index, []).append(
                    (
                        field,
                        f"entries[{earlier}] of this atomic batch writes {event.subject} before "
                        f"{at}: preconditions in an atomic batch are checked against the stream "
                        "as it was before the batch, so none may name a subject written earlier "
                        "in it",
                    )
                )
        elif condition == "expected_last_sequence" and index > 0:
            bad.setdefault(index, []).append(
                (field, "only the first entry of an atomic batch may expect a stream sequence")
            )
        elif condition == "expected_last_event_id":
            bad.setdefault(index, []).append(
                (field, "not supported in an atomic batch (JetStream does not check it there)")
            )
        first_on_subject.setdefault(event.subject, index)
    return bad
