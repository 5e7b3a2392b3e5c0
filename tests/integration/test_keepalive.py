"""An idle client with ordinary keepalive settings keeps its connection and its stream.

Go's common setting (ping every 10 s, also without calls) made the server answer GOAWAY
too_many_pings after about 30 s: its default policy allowed one ping in 5 min without data.
This test is slow on purpose (it idles past three client pings).
"""

from __future__ import annotations

import asyncio

import grpc

from gateway.server import Gateway
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import request

CLIENT_KEEPALIVE = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Keep pinging while nothing is sent, as Go and Java clients do.
    ("grpc.http2.max_pings_without_data", 0),
]
# Past the third client ping: the old policy sent GOAWAY on it.
IDLE_SECONDS = 35.0


async def test_idle_stream_survives_client_keepalive_pings(gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(gateway.address, options=CLIENT_KEEPALIVE) as channel:
        stub = gateway_pb2_grpc.EventGatewayStub(channel)
        call = stub.PublishStream()
        await call.write(gateway_pb2.PublishBatchRequest(entries=[request("o-1")]))
        first = await call.read()
        assert isinstance(first, gateway_pb2.PublishBatchResponse)
        assert first.results[0].HasField("ok")

        await asyncio.sleep(IDLE_SECONDS)  # the idleness is what this test is about

        await call.write(gateway_pb2.PublishBatchRequest(entries=[request("o-2")]))
        second = await call.read()
        assert isinstance(second, gateway_pb2.PublishBatchResponse), await call.code()
        assert second.results[0].ok.sequence == first.results[0].ok.sequence + 1
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
        # The connection itself is still the same one: no reconnect was needed.
        assert channel.get_state() == grpc.ChannelConnectivity.READY
