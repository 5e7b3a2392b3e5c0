"""gzip-compressed requests work (docs/clients.md recommends it as optional)."""

from __future__ import annotations

import grpc
from nats.aio.client import Client

from gateway.server import Gateway
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import request


async def test_gzip_requests_are_accepted(gateway: Gateway, nc: Client) -> None:
    async with grpc.aio.insecure_channel(
        gateway.address, compression=grpc.Compression.Gzip
    ) as channel:
        stub = gateway_pb2_grpc.EventGatewayStub(channel)
        reply = await stub.Publish(request("o-1", event_id="gz-1"), timeout=10)
        batch = await stub.PublishBatch(
            gateway_pb2.PublishBatchRequest(entries=[request("o-2", event_id="gz-2")]),
            timeout=10,
            compression=grpc.Compression.Gzip,
        )
    assert batch.results[0].HasField("ok")
    stored = await nc.jetstream().get_msg("ORDERS", reply.sequence)
    assert (stored.headers or {})["Nats-Msg-Id"] == "gz-1"
