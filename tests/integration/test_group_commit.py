"""Group commit (issue 12) against a nats-server that syncs every write (sync_interval: always).

Events of many RPCs for one allow_atomic stream share atomic batches; each still gets the
result it would get alone. A message stored by an atomic batch carries `Nats-Batch-Id`,
which is how these tests see what was coalesced and what went alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import nats
import pytest
from nats.aio.client import Client
from nats.js.api import RawStreamMsg

from gateway.config import GatewayConfig
from gateway.embedded import NatsServer
from jetgate import wire
from jetgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import order_placed, request, serving
from tests.integration.test_publish_stall import Stall

Stub = gateway_pb2_grpc.EventGatewayStub
OK = grpc.StatusCode.OK.value[0]
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS.value[0]
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


@pytest.fixture
def fsync_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "fsync", sync_always=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fsync_config(gateway_config: GatewayConfig, fsync_server: NatsServer) -> GatewayConfig:
    return dataclasses.replace(gateway_config, nats_url=fsync_server.url, durability="fsync")


@pytest.fixture
async def stub(fsync_config: GatewayConfig) -> AsyncIterator[Stub]:
    async with (
        serving(fsync_config) as gateway,
        grpc.aio.insecure_channel(gateway.address) as channel,
    ):
        yield gateway_pb2_grpc.EventGatewayStub(channel)


@pytest.fixture
async def js_client(fsync_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(fsync_server.url)
    try:
        yield client
    finally:
        await client.close()


async def _stored(nc: Client, sequence: int) -> RawStreamMsg:
    return await nc.jetstream().get_msg("ORDERS", sequence)


def _batched(msg: RawStreamMsg) -> bool:
    return wire.BATCH_ID in (msg.headers or {})


async def test_concurrent_publishes_share_batches_with_their_own_sequences(
    stub: Stub, js_client: Client
) -> None:
    keys = [f"c-{i}" for i in range(64)]
    replies = await asyncio.gather(*(stub.Publish(request(k, event_id=k)) for k in keys))

    assert sorted(r.sequence for r in replies) == list(range(1, 65))
    batched = 0
    for key, reply in zip(keys, replies, strict=True):
        assert (reply.event_id, reply.duplicate) == (key, False)
        msg = await _stored(js_client, reply.sequence)
        assert msg.subject == f"orders.OrderPlaced.{key}"
        assert (msg.headers or {})[wire.MSG_ID] == key
        assert msg.data == order_placed(key).SerializeToString()
        batched += _batched(msg)
    assert batched > 0, "no two of 64 concurrent publishes shared a commit"


async def test_a_stored_duplicate_in_a_batch_does_not_fail_its_neighbours(
    stub: Stub, js_client: Client
) -> None:
    first = await stub.Publish(request("d-1", event_id="dup"))
    entries = [request(f"n-{i}", event_id=f"n-{i}") for i in range(5)]
    entries.insert(2, request("d-1", event_id="dup"))
    batch, *singles = await asyncio.gather(
        stub.PublishBatch(gateway_pb2.PublishBatchRequest(entries=entries)),
        *(stub.Publish(request(f"s-{i}", event_id=f"s-{i}")) for i in range(20)),
    )

    dup = batch.results[2]
    assert dup.WhichOneof("result") == "ok", dup
    assert (dup.ok.sequence, dup.ok.duplicate) == (first.sequence, True)
    others = [r.ok for i, r in enumerate(batch.results) if i != 2] + list(singles)
    assert all(not r.duplicate for r in others)
    assert len({r.sequence for r in others}) == len(others)
    for result in others:
        msg = await _stored(js_client, result.sequence)
        assert (msg.headers or {})[wire.MSG_ID] == result.event_id
    info = await js_client.jetstream().stream_info("ORDERS")
    assert info.state.messages == 1 + len(others)


async def test_preconditioned_events_go_alone(stub: Stub, js_client: Client) -> None:
    await stub.Publish(request("p-1", event_id="p-0"))
    entries = [request(f"q-{i}", event_id=f"q-{i}") for i in range(6)]
    entries.insert(
        3,
        request(
            "p-1",
            event_id="p-ok",
            precondition=event_pb2.Precondition(expected_last_key_sequence=1),
        ),
    )
    entries.append(
        request(
            "p-1",
            event_id="p-stale",
            precondition=event_pb2.Precondition(expected_last_key_sequence=1),
        )
    )
    reply = await stub.PublishBatch(gateway_pb2.PublishBatchRequest(entries=entries))

    codes = [r.error.code if r.HasField("error") else OK for r in reply.results]
    # Of the two expecting sequence 1 of key p-1, exactly one is stored.
    assert codes[:3] + codes[4:7] == [OK] * 6
    assert sorted([codes[3], codes[7]]) == [OK, FAILED_PRECONDITION]
    held = next(r for r in (reply.results[3], reply.results[7]) if r.HasField("ok"))
    assert not _batched(await _stored(js_client, held.ok.sequence))
    plain = [await _stored(js_client, r.ok.sequence) for i, r in enumerate(reply.results[:7])]
    assert any(_batched(m) for i, m in enumerate(plain) if i != 3)


async def test_atomic_publish_batch_is_still_all_or_nothing(stub: Stub, js_client: Client) -> None:
    await stub.Publish(request("a-0", event_id="a-stored"))
    entries = [request(f"a-{i}", event_id=f"a-{i}") for i in range(1, 5)]
    entries.append(request("a-0", event_id="a-stored"))
    atomic, *singles = await asyncio.gather(
        stub.PublishBatch(gateway_pb2.PublishBatchRequest(entries=entries, atomic=True)),
        *(stub.Publish(request(f"u-{i}", event_id=f"u-{i}")) for i in range(10)),
    )

    assert {r.error.code for r in atomic.results} == {ALREADY_EXISTS}
    info = await js_client.jetstream().stream_info("ORDERS")
    assert info.state.messages == 1 + len(singles)
    for result in singles:
        msg = await _stored(js_client, result.sequence)
        assert (msg.headers or {})[wire.MSG_ID] == result.event_id


async def test_publish_timeout_holds_while_the_server_is_stopped(
    fsync_config: GatewayConfig, fsync_server: NatsServer
) -> None:
    config = dataclasses.replace(fsync_config, publish_timeout=1.0)
    async with (
        serving(config) as gateway,
        grpc.aio.insecure_channel(gateway.address) as channel,
    ):
        stub = gateway_pb2_grpc.EventGatewayStub(channel)
        await stub.Publish(request("warm-up"))
        stall = Stall(fsync_server)
        try:
            stall.stop()
            calls = [stub.Publish(request(f"t-{i}", event_id=f"t-{i}")) for i in range(10)]
            batch = stub.PublishBatch(
                gateway_pb2.PublishBatchRequest(entries=[request(f"b-{i}") for i in range(10)])
            )
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            reply = await batch
            stall.record("answered")
            stall.resume()
        finally:
            await stall.close()

    assert stall.events == ["stopped", "answered", "resumed"]
    assert all(isinstance(o, grpc.aio.AioRpcError) for o in outcomes)
    assert {o.code() for o in outcomes if isinstance(o, grpc.aio.AioRpcError)} == {
        grpc.StatusCode.DEADLINE_EXCEEDED
    }
    assert {r.error.code for r in reply.results} == {DEADLINE_EXCEEDED}
