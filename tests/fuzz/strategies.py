"""Hypothesis strategies over every field of every request message of jetgate.v1.

Each field is drawn from values a correct client would send (so that a good share of the
examples is stored and read back) and from values around every rule and limit: keys and
ids with forbidden characters and at 128/129 characters, header names that are reserved
in any letter case or are no RFC 7230 token, values with non-ASCII text, whitespace at
the edges, CR/LF and 4096/4097 characters, header sets around JetStream's 64 KiB, type
URLs registered and routed, registered but unrouted, unknown or malformed, payloads that
are random bytes, messages of other types or of the right type, and events whose size
lands within a few hundred bytes of nats-server's `max_payload` on either side, and
per-entry trace contexts (W3C names or not, valid or malformed traceparents).
"""

from __future__ import annotations

import contextlib
import random
from datetime import UTC, datetime
from typing import Generic, TypeVar

from google.protobuf import any_pb2, duration_pb2, text_format, timestamp_pb2
from google.protobuf.message import Message
from hypothesis import strategies as st

from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import event_pb2, gateway_pb2
from tests.fuzz.live import MAX_BATCH_ENTRIES

# nats-server's default; the fixture asserts the live server has it.
MAX_PAYLOAD = 1024 * 1024
ROUTED = ("OrderPlaced", "OrderPaid", "OrderShipped", "OrderCancelled")
UNROUTED = ("Money", "LineItem", "Address")  # registered value types, no route
T = TypeVar("T")
M = TypeVar("M", gateway_pb2.PublishRequest, gateway_pb2.PublishBatchRequest)
PACKAGE = "jetgate.examples.orders.v1."
MESSAGE_TYPES: dict[str, type[Message]] = {
    name: getattr(orders_pb2, name) for name in (*ROUTED, *UNROUTED)
}
RESERVED_NAMES = (
    "Nats-Msg-Id",
    "nats-expected-stream",
    "NATS-TTL",
    "Nats-Batch-Id",
    "ce-id",
    "CE-Type",
    "ce-custom",
    "Jetgate-Group",
    "traceparent",
    "TraceState",
    "baggage",
    "Content-Type",
    "Status",
    "description",
)
TOKEN = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))
WHITESPACE = (" ", "\t", "\u00a0", "\u3000", "\x0b", "\x0c")

short_text = st.text(max_size=12)
# Keys, ids and header values: plain values most of the time, each rule's edge otherwise.
plain_key = st.text(alphabet="abcxyz-_019", min_size=1, max_size=12)
key_pool = st.sampled_from(["o-1", "o-2", "k"])


def at_length(char: str, *lengths: int) -> st.SearchStrategy[str]:
    return st.sampled_from([char * n for n in lengths])


keys = st.one_of(
    key_pool,
    plain_key,
    st.text(min_size=0, max_size=20),  # any Unicode: dots, spaces, controls, wildcards
    at_length("k", 127, 128, 129),
    st.builds(lambda a, c, b: a + c + b, plain_key, st.sampled_from(".*> \t\n\x00\x7f"), plain_key),
    st.sampled_from(["é", "☃", "o\u00a0x", "*", ">", "."]),
)
event_ids = st.one_of(
    st.just(""),
    st.just(""),
    st.sampled_from(["id-1", "id-2", "id-3"]),
    st.text(alphabet=PRINTABLE, min_size=1, max_size=40),
    st.text(max_size=20),
    at_length("i", 128, 129),
    st.builds(lambda a, c: a + c, plain_key, st.sampled_from([" ", "é", "\t", "\x00"])),
)
header_names = st.one_of(
    st.sampled_from(["tenant", "x-a", "X-A", "x_b", "Trace"]),
    st.sampled_from(RESERVED_NAMES),
    st.text(alphabet=TOKEN, min_size=1, max_size=20),
    at_length("h", 128, 129),
    st.text(max_size=10),  # empty, spaces, colons, non-ASCII: not tokens
)
header_values = st.one_of(
    st.text(alphabet=PRINTABLE, max_size=20),
    st.text(max_size=20),  # non-ASCII, controls, edge whitespace
    st.sampled_from(["über ☃", "srcé", "a b", "", "日本語"]),
    st.builds(
        lambda w, s, left: w + s if left else s + w,
        st.sampled_from(WHITESPACE),
        plain_key,
        st.booleans(),
    ),
    st.builds(lambda s, c: s + c + s, plain_key, st.sampled_from(["\r", "\n", "\r\n", "\x00"])),
    at_length("v", 4095, 4096, 4097),
)
small_headers = st.dictionaries(header_names, header_values, max_size=5)
# Around JetStream's 64 KiB limit on a message's headers: 15 x 4 KiB fit, 17 do not.
big_headers = st.integers(13, 16).map(lambda n: {f"x-big-{i}": "v" * 4096 for i in range(n)})
headers = st.one_of(st.just({}), small_headers, small_headers, big_headers)
sources = st.one_of(
    st.just(""),
    st.just(""),
    st.sampled_from(["svc", "srcé", "svc ", " svc", "a\tb", "s\nx", "s\rx"]),
    st.text(max_size=20),
    at_length("s", 1024, 1025),
)
type_urls = st.one_of(
    st.sampled_from([wire.type_url(PACKAGE + n) for n in ROUTED]),
    st.sampled_from([wire.type_url(PACKAGE + n) for n in UNROUTED]),
    st.sampled_from(
        [
            "example.com/types/" + PACKAGE + "OrderPlaced",
            PACKAGE + "OrderPaid",
            "type.googleapis.com/acme.v1.Nope",
            "type.googleapis.com/",
            "/",
            "",
            "type.googleapis.com/" + PACKAGE + "orderplaced",
            "type.googleapis.com/" + PACKAGE + "OrderPlaced/",
            "type.googleapis.com/" + PACKAGE + "OrderPlaced ",
        ]
    ),
    st.text(max_size=30),
)
timestamps = st.one_of(
    st.none(),
    st.none(),
    st.none(),
    st.builds(
        timestamp_pb2.Timestamp,
        seconds=st.one_of(
            st.integers(0, 4_000_000_000),
            st.sampled_from([-62_135_596_801, -62_135_596_800, 253_402_300_799, 253_402_300_800]),
            st.integers(-(2**63), 2**63 - 1),
        ),
        nanos=st.one_of(st.integers(0, 999_999_999), st.sampled_from([-1, 1_000_000_000])),
    ),
)
# No valid ttl below an hour: a
# stored event must still be there when a duplicate of it is read back minutes later.
ttls = st.one_of(
    st.none(),
    st.none(),
    st.none(),
    st.none(),
    st.builds(
        duration_pb2.Duration,
        seconds=st.one_of(
            st.sampled_from([0, -1, 3600, 7_400_000_000, 7_500_000_000, 10**11, 315 * 10**9]),
            st.sampled_from([2**62, 2**63 - 1, 315_576_000_000, 315_576_000_001]),
            st.integers(3600, 10**12),
        ),
        nanos=st.sampled_from([0, 0, 0, 500]),
    ),
)
sequences = st.one_of(st.sampled_from([0, 0, 1, 2**64 - 1]), st.integers(0, 2**64 - 1))
preconditions = st.one_of(
    st.none(),
    st.none(),
    st.none(),
    st.none(),
    st.none(),
    st.builds(event_pb2.Precondition, expected_last_subject_sequence=sequences),
    st.builds(event_pb2.Precondition, expected_last_key_sequence=sequences),
    st.builds(event_pb2.Precondition, expected_last_sequence=sequences),
    st.builds(event_pb2.Precondition, expected_last_event_id=event_ids),
)


# PublishRequest.trace_context: W3C names only, values NATS can carry; a malformed
# traceparent is ignored (the call's context applies), anything else refused.
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
trace_values = st.one_of(
    st.just(TRACEPARENT),
    st.sampled_from(["00-xyz", "", "ff-" + TRACEPARENT[3:], TRACEPARENT.upper()]),
    st.text(alphabet=PRINTABLE, max_size=30),
    header_values,
)
trace_contexts = st.one_of(
    st.just({}),
    st.just({"traceparent": TRACEPARENT}),
    st.fixed_dictionaries(
        {"traceparent": st.just(TRACEPARENT)},
        optional={
            "tracestate": st.sampled_from(["a=1", "vendor=x,b=2", " a=1"]),
            "baggage": trace_values,
        },
    ),
    st.dictionaries(
        st.sampled_from(["traceparent", "tracestate", "baggage", "Traceparent", "x-trace", ""]),
        trace_values,
        max_size=3,
    ),
)


@st.composite
def messages(draw: st.DrawFn, name: str) -> Message:
    """A valid message of type `name` (an order event or value type) with drawn fields."""
    kind = MESSAGE_TYPES[name]
    message = kind()
    for field in kind.DESCRIPTOR.fields:
        if field.type == field.TYPE_STRING and draw(st.booleans()):
            setattr(message, field.name, draw(short_text))
    return message


@st.composite
def payloads(draw: st.DrawFn, type_url: str) -> bytes:
    """Bytes for an Any of `type_url`: its own type, another type, random, or garbage."""
    own = wire.type_from_url(type_url).removeprefix(PACKAGE)
    choice = draw(st.sampled_from(["own", "own", "other", "random", "empty"]))
    if choice == "own" and own in MESSAGE_TYPES:
        return draw(messages(own)).SerializeToString()
    if choice == "other":
        return draw(messages(draw(st.sampled_from(sorted(MESSAGE_TYPES))))).SerializeToString()
    if choice == "empty":
        return b""
    seed = draw(st.integers(0, 2**32))
    return random.Random(seed).randbytes(draw(st.integers(1, 300)))


def any_of(type_url: str, value: bytes) -> any_pb2.Any:
    return any_pb2.Any(type_url=type_url, value=value)


def event_size(event: event_pb2.Event) -> int:
    """Bytes the stored event takes (payload and the headers the gateway writes)."""
    name = wire.type_from_url(event.payload.type_url)
    envelope = wire.Envelope(
        id=event.id or wire.new_event_id(),
        type=name,
        source=event.source or "jetgate",
        key=event.key,
        time=(
            event.time.ToDatetime(tzinfo=UTC)
            if event.HasField("time")
            else datetime(2026, 1, 1, tzinfo=UTC)
        ),
        headers=dict(event.headers),
        ttl_seconds=event.ttl.seconds if event.HasField("ttl") else None,
    )
    return len(event.payload.value) + wire.encoded_headers_size(wire.encode_headers(envelope))


def pad_to(event: event_pb2.Event, target: int) -> None:
    """Make `event` an OrderPlaced of about `target` bytes in all (padding customer_id)."""
    order = orders_pb2.OrderPlaced(order_id=event.key[:20])
    event.payload.CopyFrom(any_of(wire.type_url(PACKAGE + "OrderPlaced"), b""))
    for _ in range(4):  # the length prefix of the padding changes its own size: converge
        event.payload.value = order.SerializeToString()
        missing = target - event_size(event)
        if missing == 0:
            return
        order.customer_id = "c" * max(0, len(order.customer_id) + missing)


def either(draw: st.DrawFn, valid: st.SearchStrategy[T], wild: st.SearchStrategy[T]) -> T:
    """A draw from `wild` one time in three, else from `valid`: most examples break one or
    two rules at a time, so that each rule is reached, and many are stored."""
    return draw(wild) if draw(st.integers(0, 2)) == 0 else draw(valid)


valid_headers = st.dictionaries(
    st.sampled_from(["tenant", "x-a", "X-A", "x_b"]),
    st.one_of(plain_key, st.sampled_from(["über ☃", "srcé", "a b", "", "日本語"])),
    max_size=3,
)


@st.composite
def events(draw: st.DrawFn, *, wild: bool = True) -> event_pb2.Event:
    """An event: valid and small, or (`wild`) with some fields drawn to break rules."""
    name = draw(st.sampled_from(ROUTED))
    url = wire.type_url(PACKAGE + name)
    event = event_pb2.Event(
        id=draw(st.sampled_from(["", "", "id-1"])),
        key=draw(st.one_of(key_pool, plain_key)),
        payload=any_of(url, draw(messages(name)).SerializeToString()),
        headers=draw(valid_headers),
    )
    if not wild:
        return event
    event.id = either(draw, st.just(event.id), event_ids)
    event.source = either(draw, st.just(""), sources)
    event.key = either(draw, st.just(event.key), keys)
    event.headers.clear()
    event.headers.update(either(draw, st.just(dict(draw(valid_headers))), headers))
    if draw(st.integers(0, 3)) == 0:
        url = draw(type_urls)
        event.payload.CopyFrom(any_of(url, draw(payloads(url))))
    elif draw(st.integers(0, 3)) == 0:
        event.payload.value = draw(payloads(url))
    if draw(st.integers(0, 19)) == 0:
        event.ClearField("payload")
    if (moment := draw(timestamps)) is not None:
        event.time.CopyFrom(moment)
    if (ttl := draw(ttls)) is not None:
        event.ttl.CopyFrom(ttl)
    if draw(st.integers(0, 5)) == 0:  # Output-only fields: ignored on input.
        event.stream, event.subject, event.sequence = "X", "x.y", 7
    if draw(st.integers(0, 7)) == 0:  # around max_payload, with the headers it has
        # A timestamp out of range fails the size estimate: the gateway refuses it anyway.
        with contextlib.suppress(ValueError, OverflowError):
            pad_to(event, MAX_PAYLOAD + draw(st.integers(-300, 60)))
    return event


@st.composite
def requests(draw: st.DrawFn, *, wild: bool | None = None) -> gateway_pb2.PublishRequest:
    """A PublishRequest: valid and small, or wild (see `events`), with a precondition."""
    if wild is None:
        wild = draw(st.booleans())
    request = gateway_pb2.PublishRequest(event=draw(events(wild=wild)))
    if draw(st.integers(0, 19)) == 0:
        request.ClearField("event")
    if (precondition := draw(preconditions)) is not None:
        request.precondition.CopyFrom(precondition)
    if draw(st.integers(0, 3)) == 0:
        request.trace_context.update(draw(trace_contexts))
    return request


@st.composite
def batches(draw: st.DrawFn) -> gateway_pb2.PublishBatchRequest:
    """A PublishBatchRequest: 0 entries, 1-6, or one over max_batch_entries, entries on one
    subject, or `near_limits`; atomic or not."""
    shape = draw(st.sampled_from(["some", "some", "some", "none", "over", "same", "edge"]))
    if shape == "edge":
        entries = list(draw(near_limits()).entries)
    elif shape == "none":
        entries = []
    elif shape == "over":
        entries = draw(
            st.lists(
                requests(wild=False), min_size=MAX_BATCH_ENTRIES + 1, max_size=MAX_BATCH_ENTRIES + 1
            )
        )
    elif shape == "same":  # one subject, one precondition, ids that may collide
        first = draw(requests(wild=False))
        entries = [gateway_pb2.PublishRequest() for _ in range(draw(st.integers(2, 3)))]
        same_id = draw(st.booleans())
        for index, entry in enumerate(entries):
            entry.CopyFrom(first)
            if not same_id:
                entry.event.id = f"{first.event.id}-{index}" if first.event.id else ""
        if (precondition := draw(preconditions)) is not None:
            for entry in entries:
                entry.precondition.CopyFrom(precondition)
    else:
        entries = draw(st.lists(requests(), min_size=1, max_size=6))
    return gateway_pb2.PublishBatchRequest(entries=entries, atomic=draw(st.booleans()))


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """Request bytes that may not parse: random, truncated or corrupted valid requests,
    or invalid UTF-8 in a string field."""
    choice = draw(st.sampled_from(["random", "truncated", "flipped", "utf8", "valid"]))
    if choice == "random":
        return draw(st.binary(max_size=80))
    if choice == "utf8":  # PublishRequest.event (1) { key (3): 0xff 0xfe }
        return bytes([0x0A, 0x04, 0x1A, 0x02, 0xFF, 0xFE])
    valid = draw(requests(wild=False)).SerializeToString()
    if choice == "valid" or not valid:
        return valid
    cut = draw(st.integers(0, len(valid) - 1))
    if choice == "truncated":
        return valid[:cut]
    return valid[:cut] + bytes([valid[cut] ^ draw(st.integers(1, 255))]) + valid[cut + 1 :]


class Shown(Generic[M]):
    """A drawn message whose repr (in hypothesis' report of a failing example) is its text
    format with long payloads cut: a near-max_payload event would print a megabyte."""

    def __init__(self, message: M) -> None:
        self.message: M = message

    def __repr__(self) -> str:
        copy: M = type(self.message)()
        copy.CopyFrom(self.message)
        entries = copy.entries if isinstance(copy, gateway_pb2.PublishBatchRequest) else [copy]
        for entry in entries:
            if isinstance(entry, gateway_pb2.PublishRequest) and entry.HasField("event"):
                value = entry.event.payload.value
                if len(value) > 200:  # renamed type: text_format must not parse the cut value
                    payload = entry.event.payload
                    payload.type_url += f" (value cut: {len(value)} bytes)"
                    payload.value = value[:40]
                for name, header in list(entry.event.headers.items()):
                    if len(header) > 200:
                        entry.event.headers[name] = header[:40] + f"...({len(header)} chars)"
        atomic = " atomic" if getattr(copy, "atomic", False) else ""
        return (
            f"{type(copy).__name__}{atomic}<{text_format.MessageToString(copy, as_one_line=True)}>"
        )


@st.composite
def shown(draw: st.DrawFn, strategy: st.SearchStrategy[M]) -> Shown[M]:
    # Not `strategy.map(Shown)`: hypothesis would print that as `Shown(<full message>)`.
    return Shown(draw(strategy))


@st.composite
def near_limits(draw: st.DrawFn, which: str = "") -> gateway_pb2.PublishBatchRequest:
    """Valid events, one of them near a size limit (`which`, default either): its payload
    within a few hundred bytes of max_payload (with the headers it has), or its `headers`
    around JetStream's 64 KiB."""
    entries = draw(st.lists(requests(wild=False), min_size=1, max_size=3))
    edge = entries[draw(st.integers(0, len(entries) - 1))].event
    if (which or draw(st.sampled_from(["payload", "headers"]))) == "payload":
        pad_to(edge, MAX_PAYLOAD + draw(st.integers(-200, 20)))
    else:
        edge.headers.update(draw(big_headers))
        filler = draw(st.integers(0, 4096))
        if filler:
            edge.headers["x-fill"] = "f" * filler
    return gateway_pb2.PublishBatchRequest(entries=entries, atomic=draw(st.booleans()))
