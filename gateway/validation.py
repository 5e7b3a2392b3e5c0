"""Turns one PublishRequest into a ready NATS message, or the field violations it has.

Everything is checked before anything is sent: type registered and routed, payload parses
as its type, key, id, headers, time, ttl, size against the server's max_payload and the
stream's max_msg_size, precondition. Output-only Event fields (stream, subject, sequence)
are ignored on input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.config import StreamConfig
from gateway.errors import FieldViolation
from gateway.publisher import OutboundMessage
from gateway.registry import PayloadError, TypeRegistry
from gateway.routing import Route, Router
from jetgate import wire
from jetgate.v1 import event_pb2, gateway_pb2

MAX_SOURCE_LENGTH = 1024


@dataclass(slots=True, kw_only=True)  # not frozen: cheaper to build; never changed
class PreparedEvent:
    """A validated event: the NATS message plus what the reply and errors need."""

    event_id: str
    # Whether the client chose the id (only such an event can be a retry).
    client_id: bool
    stream: str
    message: OutboundMessage
    # The precondition it carries, as a conflict skeleton (None: no precondition).
    conflict: event_pb2.SequenceConflict | None
    # Bytes left under the message size limit: room for trace headers (gateway.telemetry).
    room: int = 0


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
        self, request: gateway_pb2.PublishRequest, field: str = ""
    ) -> PreparedEvent | list[FieldViolation]:
        """The NATS message for `request`, or its violations (field paths under `field`)."""
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
        if len(source) > MAX_SOURCE_LENGTH or "\r" in source or "\n" in source:
            bad.append((f"{at}event.source", f"at most {MAX_SOURCE_LENGTH} chars, no CR/LF"))
        user_headers = event.headers
        for name, value in sorted(user_headers.items()) if user_headers else ():
            if problem := wire.header_problem(name, value):
                bad.append((f"{at}event.headers[{name!r}]", problem))
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
            if event.ttl.nanos or ttl < 1:
                bad.append((f"{at}event.ttl", "ttl must be whole seconds, at least 1s"))
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
        )
        expectations = None
        conflict = None
        if request.HasField("precondition"):
            checked, conflict = _precondition(request, at, subject, route.subject_prefix, event)
            if isinstance(checked, list):
                return checked
            expectations = checked
        headers = wire.encode_headers(envelope, expectations=expectations)
        size = len(data) + wire.encoded_headers_size(headers)
        limit = self._max_payload()
        if stream.max_msg_size > 0:
            limit = min(limit, stream.max_msg_size)
        if size > limit:
            return [
                (
                    f"{at}event.payload",
                    f"the event takes {size} bytes with its headers; the limit is {limit}",
                )
            ]
        return PreparedEvent(
            event_id=event_id,
            client_id=bool(event.id),
            stream=route.stream,
            message=OutboundMessage(subject=subject, payload=data, headers=headers),
            conflict=conflict,
            room=limit - size,
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
