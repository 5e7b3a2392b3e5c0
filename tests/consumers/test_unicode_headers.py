"""Non-ASCII header values, round trip: publish (real gateway) -> consume -> dead letter ->
`jetgate dlq list` -> `jetgate dlq redrive` -> consume again (issue 18, defect 5).

nats-py hands values like these over as `email.header.Header` objects when it reads a
stream message (`get_msg`): redrive crashed on them ('Header' object has no attribute
'strip') and the dead letters after the one it crashed on were never redriven.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from email.header import Header
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2
from nats.aio.client import Client

from consumers import ConsumerGroup, Delivery, Reject, Worker
from consumers.headers import text_headers
from gateway.config import load_config
from gateway.server import Gateway
from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc
from tests.consumers.conftest import group, running
from tests.consumers.test_dlq_cli import dlq, listed
from tests.integration.conftest import serving
from tests.support.eventually import eventually

REPO = Path(__file__).resolve().parents[2]
SOURCE = "srcé"
HEADERS = {"x-uni": "über ☃", "tenant": "t-1"}
REASON = "refusé ☃ für Kunde"


@pytest.fixture
async def gateway(nats_url: str) -> AsyncIterator[Gateway]:
    config = load_config(REPO / "jetgate.toml", env={})
    config = dataclasses.replace(config, nats_url=nats_url, listen="127.0.0.1:0")
    async with serving(config) as server:
        yield server


def test_text_headers_decodes_what_nats_py_parsed_into_header_objects() -> None:
    raw = Header("über ☃".encode().decode("ascii", "surrogateescape"), charset="unknown-8bit")
    assert text_headers({"x-uni": raw, "plain": "a b"}) == {"x-uni": "über ☃", "plain": "a b"}
    assert text_headers(None) == {}


def picky(name: str, seen: list[Delivery], *, reject: bool) -> ConsumerGroup:
    result = group(name, filter_subjects=["orders.OrderPlaced.>"])

    @result.handler(orders_pb2.OrderPlaced)
    async def handle(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        seen.append(delivery)
        if reject and delivery.key.startswith("bad-"):
            raise Reject(REASON)

    return result


async def test_non_ascii_values_survive_consume_dead_letter_list_and_redrive(
    nats_url: str, nc: Client, gateway: Gateway
) -> None:
    keys = ["bad-1", "bad-2"]
    ids: dict[str, str] = {}
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = gateway_pb2_grpc.EventGatewayStub(channel)
        for key in keys:
            payload = any_pb2.Any()
            payload.Pack(orders_pb2.OrderPlaced(order_id=key))
            event = event_pb2.Event(key=key, source=SOURCE, headers=HEADERS, payload=payload)
            reply = await stub.Publish(gateway_pb2.PublishRequest(event=event))
            ids[key] = reply.event_id

    first: list[Delivery] = []
    billing = Worker(picky("billing", first, reject=True), nc)
    async with running(billing):
        await eventually(lambda: billing.stats.dead_lettered == 2)
    for delivery in first:
        assert (delivery.source, dict(delivery.headers)) == (SOURCE, HEADERS)

    rows = await listed(nats_url, "billing")
    assert sorted(row["event_id"] for row in rows) == sorted(ids.values())
    assert {row["error"] for row in rows} == {REASON}

    code, out, err = await dlq(nats_url, "redrive", "--group", "billing")
    assert code == 0, err
    assert out.splitlines()[-1] == "redrove 2 dead letters of group billing"
    assert await listed(nats_url, "billing") == []

    again: list[Delivery] = []
    fixed = Worker(picky("billing", again, reject=False), nc)
    async with running(fixed):
        await eventually(lambda: len(again) == 2)
    assert sorted(d.event_id for d in again) == sorted(ids.values())
    for delivery in again:
        assert delivery.source == SOURCE
        assert dict(delivery.headers) == HEADERS
        # Stored percent-encoded (the CloudEvents NATS binding), kept as stored by redrive.
        assert delivery.raw_headers[wire.CE_SOURCE] == "src%C3%A9"
        assert delivery.raw_headers["x-uni"].encode() == "über ☃".encode()
        assert delivery.raw_headers[wire.REDRIVE_GROUP] == "billing"
