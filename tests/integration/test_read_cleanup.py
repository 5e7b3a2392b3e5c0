"""A Read that ends by itself leaves no consumer behind (deleted after its status is sent)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.server import Gateway
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import order_placed, request
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

    async def no_read_consumer_left() -> bool:  # the config may declare durable groups' too
        return not any(not c.config.durable_name for c in await js.consumers_info("ORDERS"))

    await eventually(no_read_consumer_left, what="every ended read's consumer deleted")
