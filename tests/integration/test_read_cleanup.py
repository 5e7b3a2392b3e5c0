"""A Read leaves no consumer behind: one that ends by itself (deleted after its status is
sent), and one still open when the gateway stops."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import grpc.aio
from nats.aio.client import Client
from nats.js import JetStreamContext

from gateway.config import GatewayConfig
from gateway.server import Gateway
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import order_placed, request, serving
from tests.support.eventually import eventually

if TYPE_CHECKING:
    Stub = gateway_pb2_grpc.EventGatewayAsyncStub  # only in the stubs' .pyi


async def test_ended_reads_consumers_are_deleted(stub: Stub, gateway: Gateway) -> None:
    for key in ("o-1", "o-2", "o-1"):
        await stub.Publish(request(key, message=order_placed(key)))
    reads = [
        gateway_pb2.ReadRequest(
            key=gateway_pb2.KeySelector(event_type="jetgate.examples.orders.v1.OrderPlaced", key=k)
        )
        for k in ("o-1", "o-2", "o-3")
    ]
    counts = []
    for read in reads:
        responses = [r async for r in stub.Read(read, timeout=30)]
        counts.append(responses[-1].caught_up.count)
    assert counts == [2, 1, 0]
    js = gateway.nats.jetstream()

    async def no_read_consumer_left() -> bool:
        return await read_consumers(js) == 0

    await eventually(no_read_consumer_left, what="every ended read's consumer deleted")


async def read_consumers(js: JetStreamContext) -> int:
    """Ephemeral consumers on ORDERS (the config declares durable groups' too)."""
    return sum(not c.config.durable_name for c in await js.consumers_info("ORDERS"))


async def test_a_stopping_gateway_deletes_its_open_reads_consumers(
    gateway_config: GatewayConfig, nc: Client
) -> None:
    js = nc.jetstream()
    async with contextlib.AsyncExitStack() as later:  # the channel closes after the stop
        async with serving(gateway_config) as gateway:
            channel = grpc.aio.insecure_channel(gateway.address)
            later.push_async_callback(channel.close)
            stub: Stub = gateway_pb2_grpc.EventGatewayStub(channel)
            await stub.Publish(request("o-1", message=order_placed("o-1")))
            selector = gateway_pb2.KeySelector(
                event_type="jetgate.examples.orders.v1.OrderPlaced", key="o-1"
            )
            call = stub.Read(gateway_pb2.ReadRequest(key=selector, follow=True))
            async for response in call:
                if response.HasField("caught_up"):
                    break
            assert await read_consumers(js) == 1
        # Stopped with the read still following: its consumer is gone already.
        assert await read_consumers(js) == 0
