"""jetgate's streams as the official CloudEvents Go SDK sees them (issue 15).

The peer (tests/interop/cloudevents, built by `make cloudevents-peer`: sdk-go v2.16.2 and
its NATS JetStream binding) receives events published through the gateway with the SDK's
high-level client, `client.StartReceiver`, which validates every event and silently drops
an invalid one: each event arriving with its attributes is the proof. The other way, it
sends a binary-mode CloudEvent (protobuf payload, extension `tenant`) straight into the
stream, which a jetgate consumer group handles with the extension on `Delivery`.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from consumers import ConsumerGroup, Delivery, Worker
from gateway.server import Gateway
from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import gateway_pb2_grpc
from tests.consumers.conftest import running
from tests.integration.conftest import order_placed, request
from tests.interop.conftest import peer, run_peer
from tests.support.eventually import eventually

pytestmark = pytest.mark.interop

PLACED = "jetgate.examples.orders.v1.OrderPlaced"
Stub = gateway_pb2_grpc.EventGatewayStub


def _peer() -> str:
    # CLOUDEVENTS_PEER: where `make cloudevents-peer TOOLS_BIN=...` put it instead.
    return os.environ.get("CLOUDEVENTS_PEER") or str(peer("cloudevents"))


async def _run(home: Path, *args: str) -> list[dict[str, Any]]:
    done = await run_peer([_peer(), *args], home=home)
    assert done.returncode == 0, f"cloudevents {args[0]} exited {done.returncode}: {done.stderr}"
    return [json.loads(line) for line in done.stdout.splitlines()]


async def test_the_go_sdk_receiver_accepts_every_event_the_gateway_stores(
    gateway: Gateway, stub: Stub, nc: Client, nats_url: str, tmp_path: Path
) -> None:
    chosen = request("o-1", event_id="evt-1")
    chosen.event.source = "https://shop.example/checkout?region=eu"
    chosen.event.time.FromDatetime(datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=UTC))
    defaults = request("o-2")
    iri = request("o-3", event_id="e-3")
    iri.event.source = "/läden/köln"  # an IRI: stored as its URI, which the SDK accepts
    sent = [chosen, defaults, iri]
    replies = [await stub.Publish(r) for r in sent]
    js = nc.jetstream()
    stored = [(await js.get_msg("ORDERS", r.sequence)).headers or {} for r in replies]
    stored_times = [wire.parse_time(h[wire.CE_TIME]) for h in stored]

    events = await _run(
        tmp_path,
        "receive",
        "-url",
        nats_url,
        "-stream",
        "ORDERS",
        "-subject",
        "orders.>",
        "-count",
        str(len(sent)),
    )

    by_id = {e["id"]: e for e in events}  # the SDK's receiver may run handlers in parallel
    assert sorted(by_id) == sorted(r.event_id for r in replies)
    ordered = [by_id[r.event_id] for r in replies]
    for event, req, moment in zip(ordered, sent, stored_times, strict=True):
        assert event["specversion"] == "1.0"
        assert event["type"] == PLACED
        assert event["subject"] == req.event.key
        source = req.event.source or "jetgate"
        assert event["source"] == wire.header_attribute(source)  # sdk-go does not decode
        assert wire.parse_time(event["time"]) == moment
        assert event["dataschema"] == f"https://type.googleapis.com/{PLACED}"
        assert event["datacontenttype"] == "application/protobuf"
        assert event["extensions"] == {}
        data = base64.b64decode(event["data"])
        assert orders_pb2.OrderPlaced.FromString(data) == order_placed(req.event.key)
    assert stored_times[0] == datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=UTC)
    assert by_id["e-3"]["source"] == "/l%C3%A4den/k%C3%B6ln"


def _send_args(nats_url: str, event_id: str, key: str, *more: str) -> list[str]:
    payload = order_placed(key).SerializeToString()
    return [
        "send",
        "-url",
        nats_url,
        "-stream",
        "ORDERS",
        "-subject",
        f"orders.OrderPlaced.{key}",
        "-id",
        event_id,
        "-source",
        "//go-sdk/orders",
        "-type",
        PLACED,
        "-dataschema",
        f"https://type.googleapis.com/{PLACED}",
        "-data",
        base64.b64encode(payload).decode(),
        "-ext",
        "tenant=acme",
        *more,
    ]


async def test_a_consumer_group_handles_an_event_the_go_sdk_sent_with_its_extension(
    gateway: Gateway, nc: Client, nats_url: str, tmp_path: Path
) -> None:
    await _run(tmp_path, *_send_args(nats_url, "sdk-1", "o-77"))
    billing = ConsumerGroup("billing", stream="ORDERS", filter_subjects=["orders.OrderPlaced.>"])
    seen: list[tuple[orders_pb2.OrderPlaced, Delivery]] = []

    @billing.handler(orders_pb2.OrderPlaced)
    async def record(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        seen.append((event, delivery))

    worker = Worker(billing, nc)
    async with running(worker):
        await eventually(lambda: len(seen) == 1)
    [(event, delivery)] = seen
    assert event == order_placed("o-77")
    assert (delivery.event_id, delivery.event_type) == ("sdk-1", PLACED)
    assert (delivery.key, delivery.source) == ("o-77", "//go-sdk/orders")
    assert dict(delivery.extensions) == {"tenant": "acme"}
    stored = await nc.jetstream().get_msg("ORDERS", delivery.sequence)
    assert wire.MSG_ID not in (stored.headers or {})  # the SDK's client sets none


async def test_the_go_sdk_with_nats_msg_id_is_de_duplicated(
    gateway: Gateway, nc: Client, nats_url: str, tmp_path: Path
) -> None:
    # docs/consumers.md's recipe: the binding's WriteMsg plus Nats-Msg-Id = the event id.
    args = _send_args(nats_url, "sdk-2", "o-78", "-msg-id")
    [first] = await _run(tmp_path, *args)
    [again] = await _run(tmp_path, *args)
    assert first["duplicate"] is False
    assert again["duplicate"] is True
    assert again["sequence"] == first["sequence"]
    stored = await nc.jetstream().get_msg("ORDERS", first["sequence"])
    assert (stored.headers or {})[wire.MSG_ID] == "sdk-2"
