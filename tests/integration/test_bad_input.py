"""Bad input: INVALID_ARGUMENT with a BadRequest naming the field, and nothing stored."""

from __future__ import annotations

import grpc
import pytest
from nats.aio.client import Client

from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import field_violations, request, rich_status

Stub = gateway_pb2_grpc.EventGatewayStub


def _unknown_type() -> gateway_pb2.PublishRequest:
    req = request("o-1")
    req.event.payload.type_url = "type.googleapis.com/acme.v1.Nope"
    return req


def _garbage_payload() -> gateway_pb2.PublishRequest:
    req = request("o-1")
    req.event.payload.value = b"\xff\xff\xff\xff"
    return req


def _no_payload() -> gateway_pb2.PublishRequest:
    return gateway_pb2.PublishRequest(event=event_pb2.Event(key="o-1"))


def _with_key(key: str) -> gateway_pb2.PublishRequest:
    req = request("o-1")
    req.event.key = key
    return req


def _huge() -> gateway_pb2.PublishRequest:
    req = request("o-1")
    # Valid protobuf (unknown field 15, length-delimited) bigger than NATS' 1 MiB max_payload.
    blob = 2 * 1024 * 1024
    req.event.payload.value += b"\x7a" + _varint(blob) + b"x" * blob
    return req


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _ttl(seconds: int, nanos: int = 0) -> gateway_pb2.PublishRequest:
    req = request("o-1")
    req.event.ttl.seconds, req.event.ttl.nanos = seconds, nanos
    return req


def _with_id(event_id: str) -> gateway_pb2.PublishRequest:
    return request("o-1", event_id=event_id)


CASES = {
    "unknown type": (_unknown_type(), "event.payload.type_url"),
    "unrouted type": (request("o-1", message=orders_pb2.Money()), "event.payload.type_url"),
    "payload does not parse": (_garbage_payload(), "event.payload.value"),
    "no payload": (_no_payload(), "event.payload"),
    "no event": (gateway_pb2.PublishRequest(), "event"),
    "empty key": (_with_key(""), "event.key"),
    "dot in key": (_with_key("o.1"), "event.key"),
    "star in key": (_with_key("o*"), "event.key"),
    "gt in key": (_with_key("o>"), "event.key"),
    "space in key": (_with_key("o 1"), "event.key"),
    "tab in key": (_with_key("o\t1"), "event.key"),
    "key of 129 chars": (_with_key("k" * 129), "event.key"),
    "Nats- header": (request("o-1", headers={"Nats-Msg-Id": "x"}), "event.headers['Nats-Msg-Id']"),
    "nats- header lower": (request("o-1", headers={"nats-ttl": "1"}), "event.headers['nats-ttl']"),
    "ce- header": (request("o-1", headers={"ce-type": "x"}), "event.headers['ce-type']"),
    "traceparent header": (
        request("o-1", headers={"traceparent": "x"}),
        "event.headers['traceparent']",
    ),
    "content-type header": (
        request("o-1", headers={"Content-Type": "x"}),
        "event.headers['Content-Type']",
    ),
    "header name with colon": (request("o-1", headers={"a:b": "x"}), "event.headers['a:b']"),
    "header value with newline": (request("o-1", headers={"a": "x\r\ny: z"}), "event.headers['a']"),
    "payload over max_payload": (_huge(), "event.payload"),
    "id with space": (_with_id("a b"), "event.id"),
    "ttl on a stream without allow_msg_ttl": (_ttl(60), "event.ttl"),
    "sub-second ttl": (_ttl(0, 500_000_000), "event.ttl"),
}


@pytest.mark.parametrize("name", CASES)
async def test_bad_publish_is_invalid_argument_and_stores_nothing(
    name: str, stub: Stub, nc: Client
) -> None:
    req, field = CASES[name]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Publish(req)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(rich_status(caught.value))
    assert field in violations, violations
    assert (await nc.jetstream().stream_info("ORDERS")).state.messages == 0
    # The gateway is unharmed: a good event goes through afterwards.
    assert (await stub.Publish(request("o-ok"))).sequence == 1


async def test_every_violation_of_one_event_is_reported(stub: Stub) -> None:
    req = request("bad key", event_id="a b", headers={"ce-x": "1"})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Publish(req)
    assert set(field_violations(rich_status(caught.value))) == {
        "event.key",
        "event.id",
        "event.headers['ce-x']",
    }


@pytest.mark.parametrize("count", [0, 1001])
async def test_batch_size_out_of_bounds_is_invalid_argument(
    count: int, stub: Stub, nc: Client
) -> None:
    batch = gateway_pb2.PublishBatchRequest(entries=[request(f"o-{i}") for i in range(count)])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PublishBatch(batch)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "entries" in field_violations(rich_status(caught.value))
    assert (await nc.jetstream().stream_info("ORDERS")).state.messages == 0
