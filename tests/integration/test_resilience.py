"""NATS going away: health, UNAVAILABLE, recovery, and no loss of acknowledged events."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.client import Client

from gateway.embedded import NatsServer
from gateway.server import Gateway
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import request
from tests.support.eventually import eventually

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _wait_for_health(channel: grpc.aio.Channel, wanted: int) -> None:
    health = health_pb2_grpc.HealthStub(channel)

    async def check() -> None:
        reply = await health.Check(health_pb2.HealthCheckRequest(service="jetgate.v1.EventGateway"))
        assert reply.status == wanted, f"health {reply.status}, wanted {wanted}"

    await eventually(check, what="health")


async def test_health_follows_nats_and_publishes_fail_unavailable_meanwhile(
    nats_server: NatsServer, gateway: Gateway
) -> None:
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = gateway_pb2_grpc.EventGatewayStub(channel)
        await _wait_for_health(channel, SERVING)
        assert (await stub.Publish(request("before"))).sequence == 1

        nats_server.stop()
        await _wait_for_health(channel, NOT_SERVING)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Publish(request("during"))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        reply = await stub.PublishBatch(
            gateway_pb2.PublishBatchRequest(entries=[request("during-1"), request("during-2")])
        )
        assert all(r.error.code == grpc.StatusCode.UNAVAILABLE.value[0] for r in reply.results)

        nats_server.start()
        await _wait_for_health(channel, SERVING)
        assert (await stub.Publish(request("after"))).sequence == 2


async def test_kill_9_loses_no_acknowledged_event(
    nats_server: NatsServer, gateway: Gateway, nc: Client
) -> None:
    acknowledged: set[str] = set()
    failed = 0

    async def publish_forever(worker: int) -> None:
        nonlocal failed
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.EventGatewayStub(channel)
            for batch in range(10_000):  # bounded; cancelled long before
                entries = [
                    request(f"w{worker}-{batch}-{i}", event_id=f"w{worker}-{batch}-{i}")
                    for i in range(20)
                ]
                try:
                    reply = await stub.PublishBatch(
                        gateway_pb2.PublishBatchRequest(entries=entries), timeout=5
                    )
                except grpc.aio.AioRpcError:
                    failed += 1
                    await asyncio.sleep(0.01)
                    continue
                for result in reply.results:
                    if result.HasField("ok"):
                        acknowledged.add(result.ok.event_id)
                    else:
                        failed += 1
                        await asyncio.sleep(0.001)

    workers = [asyncio.create_task(publish_forever(w)) for w in range(4)]
    try:
        await eventually(lambda: len(acknowledged) >= 2000)
        nats_server.kill()  # SIGKILL while batches are in flight
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            await _wait_for_health(channel, NOT_SERVING)  # the gateway saw it go
            nats_server.start()
            await _wait_for_health(channel, SERVING)
        before = len(acknowledged)
        await eventually(lambda: len(acknowledged) >= before + 500)
    finally:
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    assert len(acknowledged) > 2500
    # The kill hit in-flight publishes (the gateway went NOT_SERVING), but the gateway
    # retries them with their ids until the server is back: `failed` may well be 0.
    print(f"client errors across the kill: {failed}")
    # Every acknowledged event is in the stream after the crash.
    js = nc.jetstream()
    await eventually(lambda: nc.is_connected)
    stored: set[str] = set()
    consumer = await js.pull_subscribe("orders.>", durable=None, stream="ORDERS")
    info = await js.stream_info("ORDERS")
    remaining = info.state.messages
    while remaining > 0:
        msgs = await consumer.fetch(min(remaining, 1000), timeout=5)
        for msg in msgs:
            stored.add((msg.headers or {})["Nats-Msg-Id"])
            await msg.ack()
        remaining -= len(msgs)
    assert acknowledged <= stored, f"lost {len(acknowledged - stored)} acknowledged events"
