"""The benchmark's events: a 256-byte OrderPlaced payload, publish requests, raw messages.

Every event has a unique key (so a unique subject) and a unique id: nothing is
de-duplicated. The raw NATS scenarios send the message the gateway would store (same
subject scheme, same CloudEvents headers), so their ratio to a gateway scenario is the
gateway's cost.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime

from google.protobuf import any_pb2, timestamp_pb2

from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import event_pb2, gateway_pb2

STREAM = "ORDERS"
SUBJECT_PREFIX = "orders"
EVENT_TYPE = "jetgate.examples.orders.v1.OrderPlaced"
PAYLOAD_SIZE = 256


def order_payload(size: int = PAYLOAD_SIZE) -> bytes:
    """A realistic OrderPlaced, padded (line item description) to exactly `size` bytes."""
    order = orders_pb2.OrderPlaced(
        order_id="o-bench-000000000001",
        customer_id="c-bench-4711",
        items=[
            orders_pb2.LineItem(
                sku="sku-000123",
                quantity=2,
                unit_price=orders_pb2.Money(currency_code="EUR", units=9, nanos=990_000_000),
            )
        ],
        total=orders_pb2.Money(currency_code="EUR", units=19, nanos=980_000_000),
        shipping_address=orders_pb2.Address(
            name="Ada Lovelace",
            line1="12 Analytical Engine Street",
            city="London",
            postal_code="NW1 6XE",
            country_code="GB",
        ),
        placed_at=timestamp_pb2.Timestamp(seconds=1_790_000_000, nanos=123_456_000),
    )
    for filler in range(size):
        order.items[0].description = "x" * filler
        if order.ByteSize() >= size:
            break
    data = order.SerializeToString()
    if len(data) != size:
        raise ValueError(f"cannot pad OrderPlaced to exactly {size} bytes (got {len(data)})")
    return data


class Events:
    """Builds publish requests and raw NATS messages; every event gets a fresh key."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.any = any_pb2.Any(type_url=wire.type_url(EVENT_TYPE), value=payload)
        self._counter = itertools.count(1)
        self._run = uuid.uuid4().hex[:8]
        # Raw scenarios: the headers the gateway writes, with id/key swapped per message.
        self._headers = wire.encode_headers(
            wire.Envelope(
                id=wire.new_event_id(),
                type=EVENT_TYPE,
                source="jetgate",
                key="k",
                time=datetime.now(UTC),
            )
        )
        self._id_prefix = str(uuid.uuid4())[:24]  # + 12 hex digits: 36 chars like a UUID

    def key(self, tag: str) -> str:
        return f"{tag}-{self._run}-{next(self._counter)}"

    def request(self, tag: str) -> gateway_pb2.PublishRequest:
        event = event_pb2.Event(key=self.key(tag), payload=self.any)
        return gateway_pb2.PublishRequest(event=event)

    def batch(self, tag: str, size: int) -> gateway_pb2.PublishBatchRequest:
        return gateway_pb2.PublishBatchRequest(entries=[self.request(tag) for _ in range(size)])

    def raw(self, tag: str) -> tuple[str, dict[str, str]]:
        """Subject and (fresh) headers of one raw message, shaped like the gateway's."""
        n = next(self._counter)
        key = f"{tag}-{self._run}-{n}"
        headers = dict(self._headers)
        event_id = f"{self._id_prefix}{n:012x}"
        headers[wire.MSG_ID] = headers[wire.CE_ID] = event_id
        headers[wire.CE_SUBJECT] = key
        return wire.subject(SUBJECT_PREFIX, EVENT_TYPE, key), headers

    def sizes(self) -> dict[str, int]:
        """Bytes of the payload, a PublishRequest and a raw message's headers and subject."""
        request = self.request("unary")
        subject, headers = self.raw("raw")
        return {
            "payload_bytes": len(self.payload),
            "publish_request_bytes": request.ByteSize(),
            "nats_headers_bytes": wire.encoded_headers_size(headers),
            "nats_subject_bytes": len(subject),
        }
