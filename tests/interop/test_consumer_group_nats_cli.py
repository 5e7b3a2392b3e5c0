"""A consumer group as the real `nats` CLI sees it: its consumer and its dead letters."""

from __future__ import annotations

import base64

import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig

from consumers import Delivery, Reject, Worker
from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2
from tests.consumers.conftest import group, run_until, store
from tests.interop.conftest import NatsJson, parse_header_block

pytestmark = pytest.mark.interop


async def test_nats_cli_shows_the_group_consumer_and_its_dead_letters(
    nc: Client, nats_json: NatsJson
) -> None:
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="ORDERS", subjects=["orders.>"]))
    sequence = await store(js, "o-1", event_id="e-1")
    billing = group(
        filter_subjects=["orders.OrderPlaced.>"], max_deliver=3, backoff=(1, 5), ack_wait=12
    )

    @billing.handler(orders_pb2.OrderPlaced)
    async def refuse(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        raise Reject("card declined")

    worker = Worker(billing, nc)
    await run_until(worker, lambda: worker.stats.dead_lettered == 1)

    consumer = await nats_json("consumer", "info", "ORDERS", "billing")
    config = consumer["config"]
    assert config["durable_name"] == "billing"
    assert config["ack_policy"] == "explicit"
    assert config["ack_wait"] == 12 * 10**9
    assert config["max_deliver"] == 4  # the group's 3, plus the dead worker's guard delivery
    assert config.get("backoff") is None
    assert config["filter_subjects"] == ["orders.OrderPlaced.>"]
    assert config["metadata"]["jetgate.backoff"] == "1s,5s"
    assert config["metadata"]["jetgate.max_deliver"] == "3"
    assert consumer["num_ack_pending"] == 0

    dead = await nats_json(
        "stream", "get", "DLQ", "--last-for", "dlq.billing.orders.OrderPlaced.o-1"
    )
    headers = parse_header_block(base64.b64decode(dead["hdrs"], validate=True))
    assert headers[wire.ORIGIN_STREAM] == "ORDERS"
    assert headers[wire.ORIGIN_SUBJECT] == "orders.OrderPlaced.o-1"
    assert headers[wire.ORIGIN_SEQUENCE] == str(sequence)
    assert headers[wire.DEAD_REASON] == "reject"
    assert headers[wire.DEAD_ERROR] == "card declined"
    assert headers[wire.CE_ID] == "e-1"
    assert headers["tenant"] == "t-1"
    payload = base64.b64decode(dead["data"], validate=True)
    assert orders_pb2.OrderPlaced.FromString(payload).order_id == "o-1"
