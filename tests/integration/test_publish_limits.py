"""Size and TTL limits: validation refuses what nats-server would refuse, break on, or lose.

Regression tests of issue 18: an atomic entry near max_payload closed the gateway's NATS
connection for good (1a); a ttl nats-server overflows was acknowledged and deleted at once
(4); headers over 64 KiB came back FAILED_PRECONDITION from JetStream (7).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from gateway.config import GatewayConfig
from gateway.server import Gateway
from jetgate import wire
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import field_violations, order_placed, request, rich_status, serving
from tests.support.eventually import eventually

Stub = gateway_pb2_grpc.EventGatewayStub
SERVING = health_pb2.HealthCheckResponse.SERVING


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _sized(key: str, event_id: str, size: int, config: GatewayConfig) -> gateway_pb2.PublishRequest:
    """A valid OrderPlaced whose NATS message (payload + headers, no trace) takes `size` bytes."""
    req = request(key, event_id=event_id)
    req.event.time.FromSeconds(1_800_000_000)
    base = order_placed(key).SerializeToString()
    envelope = wire.Envelope(
        id=event_id,
        type=order_placed().DESCRIPTOR.full_name,
        source=config.source,
        key=key,
        time=req.event.time.ToDatetime(),
    )
    room = size - wire.encoded_headers_size(wire.encode_headers(envelope)) - len(base) - 1
    pad = room - len(_varint(room))
    assert len(_varint(pad)) == len(_varint(room)), "pick another size"
    # Unknown field 15, length-delimited: still a valid OrderPlaced.
    req.event.payload.value = base + b"\x7a" + _varint(pad) + b"x" * pad
    return req


async def _serving(channel: grpc.aio.Channel) -> None:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="jetgate.v1.EventGateway")
    )
    assert reply.status == SERVING


async def test_atomic_entry_too_large_for_the_batch_headers_is_refused_and_the_gateway_lives(
    gateway: Gateway, stub: Stub, nc: Client, gateway_config: GatewayConfig
) -> None:
    limit = nc.max_payload
    # Fits alone, but not with the atomic batch headers (Nats-Batch-Id, -Sequence, -Commit).
    near = _sized("o-1", "near-limit", limit - 10, gateway_config)
    reply = await stub.PublishBatch(gateway_pb2.PublishBatchRequest(entries=[near], atomic=True))
    (result,) = reply.results
    assert result.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], result
    assert "entries[0].event.payload" in field_violations(result.error)

    # The gateway's connection is intact: SERVING, and the next events are stored.
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        await _serving(channel)
    assert (await stub.Publish(request("o-2"))).sequence == 1
    # The same event as a plain publish fits, and an atomic one with room for the headers too.
    assert (await stub.Publish(near)).sequence == 2
    fits = _sized("o-3", "fits", limit - wire.ATOMIC_BATCH_HEADERS_SIZE, gateway_config)
    reply = await stub.PublishBatch(gateway_pb2.PublishBatchRequest(entries=[fits], atomic=True))
    assert reply.results[0].ok.sequence == 3, reply.results[0]
    assert nc.is_connected


async def test_headers_over_64_kib_in_total_are_invalid_argument(stub: Stub, nc: Client) -> None:
    headers = {f"x-h{i}": "v" * 4000 for i in range(17)}  # 17 * ~4 KB > 65535 bytes
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Publish(request("o-1", headers=headers))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "event.headers" in field_violations(rich_status(caught.value))
    assert (await nc.jetstream().stream_info("ORDERS")).state.messages == 0
    assert (await stub.Publish(request("o-2"))).sequence == 1


@pytest.fixture
async def ttl_stub(gateway_config: GatewayConfig) -> AsyncIterator[Stub]:
    streams = tuple(dataclasses.replace(s, allow_msg_ttl=True) for s in gateway_config.streams)
    async with (
        serving(dataclasses.replace(gateway_config, streams=streams)) as gateway,
        grpc.aio.insecure_channel(gateway.address) as channel,
    ):
        yield gateway_pb2_grpc.EventGatewayStub(channel)


def _with_ttl(key: str, seconds: int) -> gateway_pb2.PublishRequest:
    req = request(key)
    req.event.ttl.seconds = seconds
    return req


@pytest.mark.parametrize(
    "seconds", [wire.MAX_TTL_SECONDS + 1, 7_500_000_000, 100_000_000_000, 0, -1]
)
async def test_ttl_outside_the_range_nats_server_keeps_is_invalid_argument(
    seconds: int, ttl_stub: Stub, nc: Client
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ttl_stub.Publish(_with_ttl("t-1", seconds))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "event.ttl" in field_violations(rich_status(caught.value))
    assert (await nc.jetstream().stream_info("ORDERS")).state.messages == 0


async def test_the_longest_ttl_is_stored_and_kept(ttl_stub: Stub, nc: Client) -> None:
    js = nc.jetstream()
    longest = await ttl_stub.Publish(_with_ttl("t-max", wire.MAX_TTL_SECONDS))
    shortest = await ttl_stub.Publish(_with_ttl("t-min", wire.MIN_TTL_SECONDS))

    async def expired() -> bool:
        try:
            await js.get_msg("ORDERS", shortest.sequence)
        except NotFoundError:
            return True
        return False

    # Once JetStream has expired the 1 s event stored after it, it has judged this one too
    # (a ttl it overflows expires at once).
    await eventually(expired, what="the 1 s ttl event expires")
    stored = await js.get_msg("ORDERS", longest.sequence)
    assert (stored.headers or {})[wire.TTL] == str(wire.MAX_TTL_SECONDS)
