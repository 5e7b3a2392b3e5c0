"""Interop with the real `nats` CLI (natscli v0.5.0, built by `make tools` into .tools/bin).

The CLI is a third-party peer: what it reports about the stream and the stored message
must match what the gateway promised (jetgate.toml, the PublishReply, the NATS wire
contract). Nothing here goes through nats-py.
"""

from __future__ import annotations

import base64
import tomllib
from pathlib import Path

import pytest

from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import order_placed, request
from tests.interop.conftest import NatsJson, parse_header_block

pytestmark = pytest.mark.interop

REPO = Path(__file__).resolve().parents[2]

ORDER_PLACED = "jetgate.examples.orders.v1.OrderPlaced"
KEY = "o-42"
SUBJECT = f"orders.OrderPlaced.{KEY}"
USER_HEADERS = {"tenant": "acme"}

Stub = gateway_pb2_grpc.EventGatewayStub


def test_parse_header_block() -> None:
    block = b"NATS/1.0\r\nNats-Msg-Id: e-1\r\nce-type: a.b.C\r\nx: a: b\r\n\r\n"
    assert parse_header_block(block) == {"Nats-Msg-Id": "e-1", "ce-type": "a.b.C", "x": "a: b"}


async def _publish(stub: Stub) -> gateway_pb2.PublishResponse:
    reply = await stub.Publish(request(KEY, headers=USER_HEADERS))
    assert (reply.stream, reply.subject, reply.duplicate) == ("ORDERS", SUBJECT, False)
    return reply


async def test_stream_info_shows_the_configured_stream(stub: Stub, nats_json: NatsJson) -> None:
    await _publish(stub)

    info = await nats_json("stream", "info", "ORDERS")

    declared = tomllib.loads((REPO / "jetgate.toml").read_text(encoding="utf-8"))
    (orders,) = [s for s in declared["streams"] if s["name"] == "ORDERS"]
    config = info["config"]
    assert config["name"] == "ORDERS"
    assert config["description"] == orders["description"]
    assert config["subjects"] == ["orders.>"]
    metadata = config["metadata"]
    assert ORDER_PLACED in metadata["jetgate.event_types"].split(",")
    assert metadata["jetgate.owner"] == "demo"
    assert info["state"]["messages"] == 1


async def test_stream_get_returns_the_wire_contract(stub: Stub, nats_json: NatsJson) -> None:
    reply = await _publish(stub)

    stored = await nats_json("stream", "get", "ORDERS", "--last-for", SUBJECT)

    assert stored["subject"] == SUBJECT
    assert stored["seq"] == reply.sequence
    headers = parse_header_block(base64.b64decode(stored["hdrs"], validate=True))
    assert headers["ce-type"] == ORDER_PLACED
    assert headers["Nats-Msg-Id"] == reply.event_id
    assert headers["content-type"] == "application/protobuf"
    assert headers["tenant"] == USER_HEADERS["tenant"]
    data = base64.b64decode(stored["data"], validate=True)
    assert orders_pb2.OrderPlaced.FromString(data) == order_placed(KEY)
