"""gateway.read converts a stored message into a StoredEvent exactly as
`wire.decode_envelope` + `wire.extensions` read it (the fast path must not change a field)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from gateway.ordered_pull import Stored
from gateway.read import _fill
from jetgate import wire
from jetgate.v1 import gateway_pb2

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SUBJECT = "orders.OrderPlaced.o-42"
BASE = wire.encode_headers(
    wire.Envelope(
        id="e-1",
        type="jetgate.examples.orders.v1.OrderPlaced",
        source="shop",
        key="o-42",
        time=datetime(2026, 11, 26, 14, 0, 0, 123456, tzinfo=UTC),
        headers={"order-channel": "web"},
    ),
    trace={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
)


def _reference(stream: str, item: Stored) -> gateway_pb2.StoredEvent:
    """The conversion as it was written first: decode_envelope, then field by field."""
    stored = gateway_pb2.StoredEvent()
    msg = item.msg
    headers = msg.headers or {}
    event = stored.event
    try:
        envelope: wire.Envelope | None = wire.decode_envelope(msg.subject, headers)
    except ValueError:
        envelope = None
    if envelope is not None:
        event.id = envelope.id
        event.source = envelope.source
        event.key = envelope.key
        event.payload.type_url = wire.type_url(envelope.type)
        if wire.CE_TIME in headers:
            event.time.FromDatetime(envelope.time)
        if envelope.headers:
            event.headers.update(envelope.headers)
        if envelope.ttl_seconds is not None:
            event.ttl.seconds = envelope.ttl_seconds
    else:
        event.id = headers.get(wire.MSG_ID, "")
        event.key = msg.subject.rsplit(".", 1)[-1]
        if event_type := headers.get(wire.CE_TYPE):
            event.payload.type_url = wire.type_url(wire.attribute_value(event_type))
        event.headers.update({k: v for k, v in headers.items() if not wire.is_reserved_header(k)})
    event.payload.value = msg.data
    event.stream = stream
    event.subject = msg.subject
    event.sequence = item.sequence
    stored.stored_time.FromNanoseconds(item.stored_ns)
    if extensions := wire.extensions(headers):
        stored.extensions.update(extensions)
    return stored


CASES: dict[str, dict[str, str] | None] = {
    "gateway event": BASE,
    "no headers": None,
    "empty headers": {},
    "ttl": {**BASE, wire.TTL: "3600"},
    "ttl not a number": {**BASE, wire.TTL: "1h"},
    "ttl superscript digit": {**BASE, wire.TTL: "²"},
    "no ce-time": {k: v for k, v in BASE.items() if k != wire.CE_TIME},
    "empty ce-time": {**BASE, wire.CE_TIME: ""},
    "bad ce-time": {**BASE, wire.CE_TIME: "yesterday"},
    "ce-time no such day": {**BASE, wire.CE_TIME: "2025-02-29T14:00:00.000001Z"},
    "ce-time offset": {**BASE, wire.CE_TIME: "2026-11-26T16:00:00.5+02:00"},
    "ce-time before 1970": {**BASE, wire.CE_TIME: "1969-12-31T23:59:59.250000Z"},
    "ce-time quoted": {**BASE, wire.CE_TIME: '"2026-11-26T14:00:00.000007Z"'},
    "ce-time nanoseconds": {**BASE, wire.CE_TIME: "2026-11-26T14:00:00.123456789Z"},
    "encoded attributes": {
        **BASE,
        wire.CE_ID: "id%20with%20space",
        wire.CE_SOURCE: '"https://ex.org/a b"',
        wire.CE_SUBJECT: "k%C3%A9y",
        wire.CE_TYPE: '"jetgate.examples.orders.v1.OrderPlaced"',
    },
    "empty source and subject": {**BASE, wire.CE_SOURCE: "", wire.CE_SUBJECT: ""},
    "extensions": {**BASE, "ce-tenant": "acme%21", "CE-Region": '"eu"', "ce-Partition": "1"},
    "no ce-id (not a jetgate event)": {
        k: v for k, v in {**BASE, "x-user": "u", "ce-tenant": "t"}.items() if k != wire.CE_ID
    },
    "no ce-type": {k: v for k, v in BASE.items() if k != wire.CE_TYPE},
    "plain NATS message": {"Nats-Msg-Id": "m-1", "app": "v", "content-type": "text/plain"},
}


@pytest.mark.parametrize("name", list(CASES))
def test_fill_equals_the_reference_decoding(name: str) -> None:
    headers = CASES[name]
    reply = "$JS.ACK.ORDERS.c.1.7.7.1790000000123456789.0"
    msg = Msg(Client(), subject=SUBJECT, reply=reply, data=b"\x0a\x01x", headers=headers)
    item = Stored(msg=msg, sequence=7, stored_ns=1_790_000_000_123_456_789)
    for _ in range(2):  # the second time from the caches
        got = gateway_pb2.StoredEvent()
        _fill(got, "ORDERS", item)
        expected = _reference("ORDERS", item)
        assert got == expected
        assert got.event.HasField("time") == expected.event.HasField("time")
        assert got.event.HasField("ttl") == expected.event.HasField("ttl")


def test_fill_before_1970_stored_time() -> None:
    msg = Msg(Client(), subject=SUBJECT, reply="", data=b"", headers=BASE)
    item = Stored(msg=msg, sequence=1, stored_ns=-1)
    got = gateway_pb2.StoredEvent()
    _fill(got, "ORDERS", item)
    assert got == _reference("ORDERS", item)
    assert (got.stored_time.seconds, got.stored_time.nanos) == (-1, 999_999_999)
