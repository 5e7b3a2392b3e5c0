"""A declared group's `event_types` are what its gRPC members may receive: an event of
another type on its subjects is dead-lettered by the runtime (`unknown-type`) with the
reason, never sent to a member."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from consumers import deadletter
from gateway.config import GatewayConfig
from gateway.server import Gateway
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import gateway_pb2_grpc
from tests.integration.conftest import request, serving
from tests.integration.subscriber import GROUP, subscribed, with_group
from tests.support.eventually import eventually

PLACED = orders_pb2.OrderPlaced.DESCRIPTOR.full_name


@pytest.fixture
async def gateway(gateway_config: GatewayConfig) -> AsyncIterator[Gateway]:
    config = with_group(gateway_config, event_types=(PLACED,), ack_wait=60.0)
    async with serving(config) as server:
        yield server


async def test_an_event_of_a_type_the_group_may_not_receive_is_dead_lettered(
    stub: gateway_pb2_grpc.EventGatewayStub, nc: Client
) -> None:
    paid = await stub.Publish(request("o-1", message=orders_pb2.OrderPaid(order_id="o-1")))
    placed = await stub.Publish(request("o-1"))
    async with subscribed(stub) as client:
        delivered = await eventually(lambda: client.delivery(0))
        assert delivered.event.id == placed.event_id
        client.settle(delivered.ack_id)
        js = nc.jetstream()

        async def dead() -> list[deadletter.DeadLetter]:
            letters = [x async for x in deadletter.dead_letters(js, GROUP)]
            assert letters, "no dead letter yet"
            return letters

        letters = await eventually(dead)
    assert [(x.event_id, x.reason) for x in letters] == [(paid.event_id, "unknown-type")]
    assert "OrderPaid" in letters[0].error
    assert [d.event.id for d in client.deliveries] == [placed.event_id]
