"""Read: stored events of one key or of subject filters, in stream order.

What is read (the selector; none: INVALID_ARGUMENT):
- `key` (KeySelector{event_type, key}): every event of the key in the route of
  `event_type` (a full proto name or type URL), i.e. subject filter `<prefix>.*.<key>` on
  the route's stream: an aggregate's history, exactly the events whose last sequence
  `expected_last_key_sequence` names. An event type that is not registered and routed is
  NOT_FOUND; a bad key is INVALID_ARGUMENT (BadRequest on `key.key`).
- `subjects` (SubjectSelector{stream, filter_subjects}): a stream the gateway manages (else
  NOT_FOUND), all of it or only the given filters; a filter must be a valid NATS subject
  filter inside the stream's subjects (else INVALID_ARGUMENT on
  `subjects.filter_subjects[i]`); overlapping filters are INVALID_ARGUMENT (JetStream's rule).

Where it starts: `from_sequence` (inclusive), `from_time` (the first event stored at or
after it), `last` N (the last N matching events, in order; N >= 1), or the first event.
`limit` (0: none) ends the stream after that many events.

Without `follow`: the events stored when the read began, then CaughtUp{last_sequence,
count}, then the stream ends. CaughtUp is always sent when every stored event was sent,
also when none matched (last_sequence 0); a `limit` that stops the read before ends the
stream without it: its absence means more is stored (continue with from_sequence = last
sequence + 1). With `follow`: after CaughtUp, new matching events as they are stored, until
the client cancels or `limit` events were sent.

Each event: `Event` with payload as `google.protobuf.Any` (type URL
`type.googleapis.com/<ce-type>`, the bytes exactly as stored), id, source, key, time, user
headers, ttl (when stored with one), and stream, subject and sequence; `stored_time` (when
JetStream stored it) and the CloudEvents `extensions`. A message that is not a jetgate /
CloudEvents event (published straight into the stream without `ce-type`/`ce-id`) is returned
too, with what can be read: id from `Nats-Msg-Id`, key the last subject token, the type URL
from `ce-type` when present (else empty), its non-reserved headers; nothing is skipped, so
a replay sees every message of its subjects.

`max_events_per_response` (0 or 1: one event per ReadResponse.event) puts up to that many
events (at most MAX_EVENTS_PER_RESPONSE, about MAX_RESPONSE_BYTES) into one
ReadResponse.events: as many as have arrived, so a response never waits to fill up. grpc.aio
costs ~150 us per message (client and server), more than converting an event: a replay with
one event per message reaches ~3k events/s, with 256 per message ~12-15k (docs/api.md).

With auth on, the caller needs `read` on the stream (Action.READ), else PERMISSION_DENIED.
NATS unreachable (or the read cannot resume): UNAVAILABLE; a client resumes with
from_sequence = last sequence received + 1.

How: `gateway.ordered_pull.OrderedPull` (an ephemeral pull consumer, one bounded pull at a
time, handing over the messages that have arrived in chunks; one response is yielded at a
time, so gRPC flow control paces the pulls and memory per read stays bounded). `last` N
first finds its start sequence: the consumer's `num_pending` counts matching events from a
sequence, and a binary search over the stream's sequences finds the last one from which N
are stored (about 2 log2(stream length) API calls).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

import grpc
from google.rpc import status_pb2
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.errors import APIError

from gateway.auth.policy import Action
from gateway.config import StreamConfig
from gateway.errors import FieldViolation, abort, bad_request, make_status
from gateway.ordered_pull import OrderedPull, ReadUnavailable, Stored
from gateway.routing import Router
from gateway.security import ListenerSecurity
from jetgate import wire
from jetgate.v1 import gateway_pb2

Context = grpc.aio.ServicerContext[object, object]
# ReadRequest.max_events_per_response is capped here; a response with several events is
# sent once it holds about MAX_RESPONSE_BYTES (clients accept 4 MiB messages by default, and
# one stored event is at most nats-server's max_payload, 1 MiB by default, + 64 KiB headers).
MAX_EVENTS_PER_RESPONSE = 1000
MAX_RESPONSE_BYTES = 1024 * 1024
CLOSE_TIMEOUT = 5.0  # s, Gateway.stop waits this long at most for reads' consumers to go
# JetStream: "consumer subject filters cannot overlap".
JS_CONSUMER_OVERLAPPING_FILTERS = 10138


class Reader:
    """Serves Read calls on the gateway's current NATS connection (`nats()`)."""

    def __init__(
        self,
        *,
        nats: Callable[[], NATS],
        router: Router,
        streams: Sequence[StreamConfig],
        security: ListenerSecurity,
    ) -> None:
        self._nats = nats
        self._router = router
        self._streams = {s.name: s for s in streams}
        self._security = security
        # Reads' consumers being deleted (`_close_later`): kept until done.
        self._closing: set[asyncio.Task[None]] = set()

    async def read(
        self, request: gateway_pb2.ReadRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.ReadResponse]:
        """One Read call (see the module docstring)."""
        target = self._target(request)
        if isinstance(target, status_pb2.Status):
            await abort(context, target)
        stream, filters = target
        if denial := self._security.caller().denial(Action.READ, stream):
            await abort(context, denial)
        start = _start(request)
        if isinstance(start, status_pb2.Status):
            await abort(context, start)
        try:
            nc = self._nats()
        except RuntimeError:
            await abort(context, _unavailable("not connected to NATS"))
        pull = OrderedPull(nc, stream, filters)
        try:
            sequence, moment = start
            if request.WhichOneof("start") == "last":
                sequence = await _start_of_last(pull, request.last)
            await pull.open(sequence=sequence, time=moment)
            async for response in _responses(pull, stream, request):
                yield response
        except APIError as exc:
            await abort(context, _api_status(exc, stream))
        except (ReadUnavailable, NatsError, TimeoutError, OSError) as exc:
            await abort(context, _unavailable(f"{exc!r}"))
        finally:
            self._close_later(pull)

    async def close(self) -> None:
        """Wait for the deletion of ended reads' consumers (at most CLOSE_TIMEOUT s): the
        gateway stops its connection after this, and a consumer left behind would linger
        until its inactivity threshold."""
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=CLOSE_TIMEOUT)

    def _close_later(self, pull: OrderedPull) -> None:
        """Delete the read's consumer without keeping the call open for it: the client has
        its status one JetStream round trip sooner (an aggregate's load ends sooner, and
        key reads at a time keep nats-server busier). Best effort like `close` itself: a
        consumer left behind expires after `ordered_pull.INACTIVE_THRESHOLD`."""
        task = asyncio.get_running_loop().create_task(pull.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _target(
        self, request: gateway_pb2.ReadRequest
    ) -> tuple[str, list[str]] | status_pb2.Status:
        """(stream, subject filters) the request selects, or why not."""
        which = request.WhichOneof("selector")
        if which == "key":
            selector = request.key
            violations: list[FieldViolation] = []
            if not selector.event_type:
                violations.append(("key.event_type", "event_type is required"))
            if problem := wire.key_problem(selector.key):
                violations.append(("key.key", problem))
            if violations:
                return bad_request(violations)
            name = wire.type_from_url(selector.event_type)
            route = self._router.route(name)
            if route is None:
                return make_status(
                    grpc.StatusCode.NOT_FOUND,
                    f"event type {name!r} is not registered and routed by this gateway",
                )
            return route.stream, [wire.key_filter(route.subject_prefix, selector.key)]
        if which == "subjects":
            return self._subjects(request.subjects)
        return bad_request([("selector", "set key (an aggregate) or subjects (a stream)")])

    def _subjects(
        self, selector: gateway_pb2.SubjectSelector
    ) -> tuple[str, list[str]] | status_pb2.Status:
        if not selector.stream:
            return bad_request([("subjects.stream", "stream is required")])
        config = self._streams.get(selector.stream)
        if config is None:
            # The streams are not listed: a caller may not be allowed to read any of them.
            return make_status(
                grpc.StatusCode.NOT_FOUND,
                f"stream {selector.stream!r} is not managed by this gateway",
            )
        violations: list[FieldViolation] = []
        for index, subject_filter in enumerate(selector.filter_subjects):
            where = f"subjects.filter_subjects[{index}]"
            if problem := _filter_problem(subject_filter, config):
                violations.append((where, problem))
        if violations:
            return bad_request(violations)
        return config.name, list(selector.filter_subjects)


async def _responses(
    pull: OrderedPull, stream: str, request: gateway_pb2.ReadRequest
) -> AsyncIterator[gateway_pb2.ReadResponse]:
    """The responses of an opened read: events (one per response, or batched as
    `max_events_per_response` asks), CaughtUp once, until `limit`."""
    limit = request.limit
    per_response = min(request.max_events_per_response, MAX_EVENTS_PER_RESPONSE)
    batch: gateway_pb2.ReadResponse | None = None
    events = gateway_pb2.StoredEvents().events  # those of `batch`
    sent = last = batch_bytes = 0
    async for chunk in pull.chunks(follow=request.follow):
        if not isinstance(chunk, list):  # caught up without an event
            if batch is not None:
                yield batch
                batch = None
            yield _caught_up(last, sent)
            continue
        for item in chunk:
            sent += 1
            last = item.sequence
            done = 0 < limit <= sent
            if per_response <= 1:
                response = gateway_pb2.ReadResponse()
                _fill(response.event, stream, item)
                yield response
            else:
                if batch is None:
                    batch, batch_bytes = gateway_pb2.ReadResponse(), 0
                    events = batch.events.events
                added = events.add()
                _fill(added, stream, item)
                batch_bytes += added.ByteSize()
                # Sent when full, or when the next event is not here yet: never waits to fill.
                if (
                    len(events) >= per_response
                    or batch_bytes >= MAX_RESPONSE_BYTES
                    or item.completes
                    or done
                ):
                    yield batch
                    batch = None
            if item.completes:
                yield _caught_up(last, sent)
            if done:
                return
        if batch is not None and not pull.ready:
            yield batch
            batch = None
    if batch is not None:
        yield batch


def _filter_problem(subject_filter: str, stream: StreamConfig) -> str | None:
    if any(c.isspace() for c in subject_filter):
        return f"{subject_filter!r} must not contain whitespace"
    try:
        wire.filter_tokens(subject_filter)
    except ValueError as exc:
        return str(exc)
    if not any(wire.subject_filter_covers(s, subject_filter) for s in stream.subjects):
        return (
            f"{subject_filter!r} is not inside the subjects of stream {stream.name} "
            f"({', '.join(stream.subjects)})"
        )
    return None


def _start(request: gateway_pb2.ReadRequest) -> tuple[int, datetime | None] | status_pb2.Status:
    """(from sequence, from time) of the request; `last` is resolved later."""
    which = request.WhichOneof("start")
    if which == "from_sequence":
        return request.from_sequence, None
    if which == "from_time":
        try:
            moment = request.from_time.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError) as exc:
            return bad_request([("from_time", f"not a valid timestamp: {exc}")])
        return 0, moment
    if which == "last" and request.last < 1:
        return bad_request([("last", "last must be at least 1")])
    return 0, None


async def _start_of_last(pull: OrderedPull, count: int) -> int:
    """The sequence from which `count` matching events are stored (0: fewer are stored)."""
    first, last = await pull.bounds()
    if last < first or await pull.count_from(first) <= count:
        return 0
    low, high = first, last  # count_from(low) > count ... invariant: count_from(low) >= count
    while low < high:
        middle = (low + high + 1) // 2
        if await pull.count_from(middle) >= count:
            low = middle
        else:
            high = middle - 1
    return low


def _fill(stored: gateway_pb2.StoredEvent, stream: str, item: Stored) -> None:
    """Write the stored message `item` of `stream` into `stored`, in place (cheaper than
    building messages and copying them in).

    The same fields as `wire.decode_envelope` + `wire.extensions` give, decoded the way a
    replay of many events is cheapest (this is most of a replay's CPU besides nats-py):
    header names classified once per layout (`wire.header_layout`), `ce-time` through
    `wire.time_parts`, type URLs and sources cached, Timestamp fields set directly."""
    msg = item.msg
    subject = msg.subject
    headers = msg.headers or _NO_HEADERS
    layout = wire.header_layout(tuple(headers))
    event = stored.event
    payload = event.payload
    envelope = _envelope(subject, headers)
    if envelope is not None:
        event_id, type_url, source, key, time, ttl_seconds = envelope
        event.id = event_id
        if source:
            event.source = source
        event.key = key
        payload.type_url = type_url
        if time is not None:
            timestamp = event.time
            timestamp.seconds, timestamp.nanos = time
        if ttl_seconds is not None:
            event.ttl.seconds = ttl_seconds
    else:  # not a jetgate event: what can be read
        event.id = headers.get(wire.MSG_ID, "")
        event.key = subject.rsplit(".", 1)[-1]
        if event_type := headers.get(wire.CE_TYPE):
            payload.type_url = _type_url(event_type)
    if layout.user:
        event.headers.update({name: headers[name] for name in layout.user})
    payload.value = msg.data
    event.stream = stream
    event.subject = subject
    event.sequence = item.sequence
    stored_time = stored.stored_time
    stored_time.seconds, stored_time.nanos = divmod(item.stored_ns, 1_000_000_000)
    if layout.extensions:
        stored.extensions.update(
            {attr: wire.attribute_value(headers[name]) for name, attr in layout.extensions}
        )


# (id, type URL, source, key, time (seconds, nanos) or None, ttl seconds or None)
_Envelope = tuple[str, str, str, str, tuple[int, int] | None, int | None]
_NO_HEADERS: dict[str, str] = {}


def _envelope(subject: str, headers: dict[str, str]) -> _Envelope | None:
    """What `wire.decode_envelope` reads (None where it raises: not a jetgate event); the
    time only when `ce-time` is there (an empty one: 1970)."""
    event_type = headers.get(wire.CE_TYPE)
    event_id = headers.get(wire.CE_ID)
    if event_type is None or event_id is None:
        return None
    raw_time = headers.get(wire.CE_TIME)
    ttl = headers.get(wire.TTL)
    key = headers.get(wire.CE_SUBJECT)
    try:
        time = wire.time_parts(wire.attribute_value(raw_time)) if raw_time else None
        ttl_seconds = int(ttl) if ttl and ttl.isdigit() else None
    except ValueError:
        return None
    if time is None and raw_time is not None:
        time = (0, 0)
    return (
        wire.attribute_value(event_id),
        _type_url(event_type),
        _source(headers.get(wire.CE_SOURCE, "")),
        wire.attribute_value(key) if key else subject.rsplit(".", 1)[-1],
        time,
        ttl_seconds,
    )


@functools.lru_cache(maxsize=1024)  # the event types of the streams read
def _type_url(ce_type: str) -> str:
    return wire.type_url(wire.attribute_value(ce_type))


@functools.lru_cache(maxsize=1024)  # a few sources publish
def _source(ce_source: str) -> str:
    return wire.attribute_value(ce_source)


def _caught_up(last_sequence: int, count: int) -> gateway_pb2.ReadResponse:
    response = gateway_pb2.ReadResponse()
    response.caught_up.last_sequence = last_sequence
    response.caught_up.count = count
    return response


def _unavailable(reason: str) -> status_pb2.Status:
    return make_status(
        grpc.StatusCode.UNAVAILABLE,
        f"NATS cannot serve the read now ({reason}); retry, resuming after the last sequence",
    )


def _api_status(exc: APIError, stream: str) -> status_pb2.Status:
    if exc.err_code == JS_CONSUMER_OVERLAPPING_FILTERS:
        return bad_request([("subjects.filter_subjects", f"filters overlap: {exc.description}")])
    if exc.err_code == wire.JS_STREAM_NOT_FOUND:
        return make_status(
            grpc.StatusCode.NOT_FOUND, f"stream {stream} does not exist in JetStream"
        )
    if exc.code is not None and exc.code >= 500:
        return _unavailable(f"{exc.description} (err_code {exc.err_code})")
    return make_status(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"JetStream refused the read: {exc.description} (err_code {exc.err_code})",
    )
