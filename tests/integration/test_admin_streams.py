"""Admin ListStreams/GetStream against a real gateway and nats-server: what JetStream
stores, as the gateway's configuration and routes describe it."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import grpc.aio
import pytest
from nats.aio.client import Client

from consumers import ConsumerGroup, deadletter
from gateway.server import Gateway
from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2_grpc
from tests.integration.admin_support import admin, resource, violations
from tests.integration.conftest import request

__all__ = ["admin"]  # the fixture

ORDER_TYPES = sorted(
    f"jetgate.examples.orders.v1.{name}"
    for name in orders_pb2.DESCRIPTOR.message_types_by_name
    if name.startswith("Order")
)


async def test_list_streams_counts_what_the_gateway_stored(
    admin: admin_pb2_grpc.AdminAsyncStub,
    stub: gateway_pb2_grpc.EventGatewayAsyncStub,
    gateway: Gateway,
    nc: Client,
) -> None:
    before = datetime.now(UTC)
    for key in ("o-1", "o-2", "o-1"):
        await stub.Publish(request(key), timeout=20)
    paid = orders_pb2.OrderPaid(order_id="o-1", payment_id="p-1")
    await stub.Publish(request("o-1", message=paid), timeout=20)

    reply = await admin.ListStreams(admin_pb2.ListStreamsRequest(), timeout=20)

    # No worker ever ran: no DLQ; the health-probe stream is the gateway's own, not listed.
    assert [s.name for s in reply.streams] == ["ORDERS"]
    [orders] = reply.streams
    raw = await nc.jetstream().stream_info("ORDERS")
    assert (orders.messages, orders.first_sequence, orders.last_sequence) == (4, 1, 4)
    assert orders.bytes == raw.state.bytes > 0
    # orders.OrderPlaced.o-1, orders.OrderPlaced.o-2, orders.OrderPaid.o-1
    assert orders.subjects_count == 3
    assert list(orders.subjects) == ["orders.>"]
    assert (orders.replicas, orders.storage) == (1, "file")
    # The demo's declared groups' consumers, made at start-up.
    assert orders.consumers == raw.state.consumer_count == len(gateway.config.groups)
    assert (orders.leader, orders.cluster) == ("", "")  # not a cluster
    assert list(orders.event_types) == ORDER_TYPES
    assert list(orders.event_types) == gateway.router.event_types_by_stream()["ORDERS"]
    first, last = orders.first_time.ToDatetime(UTC), orders.last_time.ToDatetime(UTC)
    stored_first = await nc.jetstream().get_msg("ORDERS", 1)
    assert stored_first.time is not None
    assert abs((first - stored_first.time).total_seconds()) < 0.001
    assert before <= first <= last <= datetime.now(UTC)


async def test_get_stream_answers_as_list_does_and_counts_consumers(
    admin: admin_pb2_grpc.AdminAsyncStub,
    stub: gateway_pb2_grpc.EventGatewayAsyncStub,
    nc: Client,
    gateway: Gateway,
) -> None:
    await stub.Publish(request("o-1"), timeout=20)
    billing = ConsumerGroup("billing", stream="ORDERS")
    await nc.jetstream().add_consumer("ORDERS", billing.consumer_config())

    got = await admin.GetStream(admin_pb2.GetStreamRequest(stream="ORDERS"), timeout=20)

    [listed] = (await admin.ListStreams(admin_pb2.ListStreamsRequest(), timeout=20)).streams
    assert got == listed
    assert (got.messages, got.consumers) == (1, len(gateway.config.groups) + 1)


async def test_the_dead_letter_stream_is_listed_once_it_exists(
    admin: admin_pb2_grpc.AdminAsyncStub, nc: Client
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await admin.GetStream(admin_pb2.GetStreamRequest(stream="DLQ"), timeout=20)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    await deadletter.ensure_stream(nc.jetstream())

    names = [s.name for s in (await admin.ListStreams(admin_pb2.ListStreamsRequest())).streams]
    assert names == ["ORDERS", wire.DEAD_LETTER_STREAM]
    dlq = await admin.GetStream(admin_pb2.GetStreamRequest(stream="DLQ"), timeout=20)
    assert (dlq.messages, list(dlq.subjects), list(dlq.event_types)) == (0, ["dlq.>"], [])
    assert not dlq.HasField("first_time")


async def test_get_stream_refuses_what_it_does_not_manage(
    admin: admin_pb2_grpc.AdminAsyncStub, nc: Client, gateway: Gateway
) -> None:
    # The health stream exists in JetStream but is not one the gateway manages for users.
    await nc.jetstream().stream_info(gateway.config.health_stream)
    for name in ("NOPE", gateway.config.health_stream):
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await admin.GetStream(admin_pb2.GetStreamRequest(stream=name), timeout=20)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        found = resource(unknown.value)
        assert (found.resource_type, found.resource_name) == ("stream", name)

    for name, why in (("", "must name a stream"), ("OR.DERS", "must be 1-64")):
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await admin.GetStream(admin_pb2.GetStreamRequest(stream=name), timeout=20)
        assert why in violations(bad.value)["stream"]
