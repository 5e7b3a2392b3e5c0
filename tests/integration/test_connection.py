"""The gateway's NATS connection: replaced when the server closes it, health follows it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import APIError

from gateway.config import GatewayConfig
from gateway.embedded import NatsServer
from gateway.server import Gateway
from jetgate import wire
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import request, serving
from tests.support.eventually import eventually

SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def small_store(tmp_path: Path) -> Iterator[NatsServer]:
    # A JetStream file store of 64 KiB in all (`max_file_store`).
    server = NatsServer(tmp_path / "small", config="jetstream {\n  max_file_store: 64KB\n}\n")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def channel(gateway: Gateway) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        yield channel


async def health(channel: grpc.aio.Channel, service: str = "jetgate.v1.EventGateway") -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service)
    )
    return int(reply.status)


async def test_a_connection_the_server_closes_is_replaced(
    gateway: Gateway, channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jetgate.gateway")
    stub = gateway_pb2_grpc.EventGatewayStub(channel)
    assert (await stub.Publish(request("before"))).sequence == 1

    # nats-py checks only the payload against max_payload; headers push the message over
    # it, so nats-server closes the connection ("maximum payload exceeded"), which nats-py
    # does not reconnect.
    closed = gateway.nats
    await closed.publish("oversize", b"x" * closed.max_payload, headers={"X-Over": "1"})
    await eventually(lambda: closed.is_closed, what="the server closes the connection")

    async def serving_again() -> bool:
        return await health(channel) == SERVING and await health(channel, "") == SERVING

    await eventually(serving_again, what="health SERVING again")

    async def publish() -> gateway_pb2.PublishResponse:
        return await stub.Publish(request("after"))

    reply: gateway_pb2.PublishResponse = await eventually(
        publish, retry_on=(grpc.aio.AioRpcError,), what="Publish"
    )
    assert reply.sequence == 2
    assert gateway.nats is not closed
    assert gateway.nats.is_connected
    replaced = [r for r in caplog.records if "closed the connection for good" in r.message]
    assert len(replaced) == 1, replaced


async def test_a_connection_dropped_under_load_loses_no_acknowledged_event(
    gateway: Gateway, channel: grpc.aio.Channel, nc: Client
) -> None:
    acknowledged: set[str] = set()
    failed = 0

    async def publish_forever(worker: int) -> None:
        nonlocal failed
        stub = gateway_pb2_grpc.EventGatewayStub(channel)
        for batch in range(10_000):  # bounded; cancelled long before
            ids = [f"w{worker}-{batch}-{i}" for i in range(20)]
            entries = [request(event_id, event_id=event_id) for event_id in ids]
            try:
                reply = await stub.PublishBatch(
                    gateway_pb2.PublishBatchRequest(entries=entries), timeout=10
                )
            except grpc.aio.AioRpcError:
                failed += len(ids)
                await asyncio.sleep(0.01)
                continue
            acknowledged.update(r.ok.event_id for r in reply.results if r.HasField("ok"))
            failed += sum(1 for r in reply.results if not r.HasField("ok"))

    workers = [asyncio.create_task(publish_forever(w)) for w in range(4)]
    try:
        await eventually(lambda: len(acknowledged) >= 500, what="publishing under way")
        dropped = gateway.nats
        await dropped.publish("oversize", b"x" * dropped.max_payload, headers={"X-Over": "1"})
        # Which nats-py sees first decides: the server's -ERR (closed for good: replaced)
        # or the reset socket (reconnected). Either way the gateway must carry on.
        await eventually(
            lambda: dropped.is_closed or dropped.stats["reconnects"] > 0,
            what="the server drops the connection",
        )
        before = len(acknowledged)
        await eventually(lambda: len(acknowledged) >= before + 500, what="publishing again")
        assert await health(channel) == SERVING
    finally:
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # The close hits publishes in flight, but the gateway publishes them again with their
    # ids on the new connection within publish_timeout: `failed` may well be 0.
    print(f"client errors across the drop: {failed}")
    stored: set[str] = set()
    js = nc.jetstream()
    consumer = await js.pull_subscribe(
        "orders.>", stream="ORDERS", config=ConsumerConfig(ack_policy=AckPolicy.NONE)
    )
    remaining = (await js.stream_info("ORDERS")).state.messages
    while remaining > 0:
        msgs = await consumer.fetch(min(remaining, 1000), timeout=5)
        stored.update((msg.headers or {})["Nats-Msg-Id"] for msg in msgs)
        remaining -= len(msgs)
    assert acknowledged <= stored, f"lost {len(acknowledged - stored)} acknowledged events"


async def test_a_connection_closed_while_nats_is_away_is_replaced_once_it_is_back(
    nats_server: NatsServer, gateway: Gateway, channel: grpc.aio.Channel
) -> None:
    # As when nats-py's reconnect attempts run out: closed for good while the server is down.
    nats_server.stop()
    closed = gateway.nats
    await closed.close()
    assert await health(channel) == NOT_SERVING
    nats_server.start()

    async def serving_again() -> bool:
        return await health(channel) == SERVING

    await eventually(serving_again, what="health SERVING once NATS is back")
    assert gateway.nats is not closed
    stub = gateway_pb2_grpc.EventGatewayStub(channel)
    assert (await stub.Publish(request("back"))).sequence == 1


@pytest.mark.parametrize("health_stream", ["JETGATE_HEALTH", ""], ids=["probe", "no-probe"])
async def test_health_turns_not_serving_while_nats_does_not_answer(
    nats_server: NatsServer, gateway_config: GatewayConfig, health_stream: str
) -> None:
    config = dataclasses.replace(
        gateway_config, health_interval=0.2, health_timeout=0.5, health_stream=health_stream
    )
    async with serving(config) as gateway, grpc.aio.insecure_channel(gateway.address) as channel:
        stub = gateway_pb2_grpc.EventGatewayStub(channel)
        assert await health(channel) == SERVING
        pid = nats_server.pid
        assert pid is not None
        # The TCP connection stays open: only an unanswered request shows the stall.
        os.kill(pid, signal.SIGSTOP)
        try:

            async def not_serving() -> bool:
                return (
                    await health(channel) == NOT_SERVING
                    and await health(channel, "") == NOT_SERVING
                )

            await eventually(not_serving, what="health NOT_SERVING while NATS is stopped")
        finally:
            os.kill(pid, signal.SIGCONT)

        async def serving_again() -> bool:
            return await health(channel) == SERVING

        await eventually(serving_again, what="health SERVING once NATS answers again")
        assert (await stub.Publish(request("after-stall"))).sequence == 1


async def test_health_turns_not_serving_while_jetstream_cannot_store(
    small_store: NatsServer, gateway_config: GatewayConfig
) -> None:
    config = dataclasses.replace(
        gateway_config, nats_url=small_store.url, health_interval=0.2, health_timeout=1.0
    )
    async with (
        serving(config) as gateway,
        grpc.aio.insecure_channel(gateway.address) as channel,
    ):
        stub = gateway_pb2_grpc.EventGatewayStub(channel)
        assert await health(channel) == SERVING
        nc = await nats.connect(small_store.url)
        try:
            js = nc.jetstream()
            # Fill the server's store (a stream limit would be the stream's business).
            refused: APIError | None = None
            for index in range(1000):  # bounded: 64 KiB takes about 16
                try:
                    await js.publish(f"orders.Filler.f{index}", b"x" * 4096, stream="ORDERS")
                except APIError as exc:
                    refused = exc
                    break
            assert refused is not None, "the store never filled up"
            assert refused.err_code == wire.JS_INSUFFICIENT_RESOURCES, refused

            async def not_serving() -> bool:
                return (
                    await health(channel) == NOT_SERVING
                    and await health(channel, "") == NOT_SERVING
                )

            await eventually(not_serving, what="health NOT_SERVING while nothing can be stored")
            await js.purge_stream("ORDERS")
        finally:
            await nc.close()

        async def serving_again() -> bool:
            return await health(channel) == SERVING

        await eventually(serving_again, what="health SERVING once storage works again")
        assert (await stub.Publish(request("after-full"))).event_id


async def test_a_gateway_started_on_a_full_store_is_not_serving_from_the_start(
    small_store: NatsServer, gateway_config: GatewayConfig
) -> None:
    nc = await nats.connect(small_store.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="FILL", subjects=["fill.>"])
        refused: APIError | None = None
        for index in range(1000):  # bounded: 64 KiB takes about 16
            try:
                await js.publish(f"fill.f{index}", b"x" * 4096, stream="FILL")
            except APIError as exc:
                refused = exc
                break
        assert refused is not None, "the store never filled up"
        assert refused.err_code == wire.JS_INSUFFICIENT_RESOURCES, refused
        config = dataclasses.replace(gateway_config, nats_url=small_store.url)
        async with (
            serving(config) as gateway,
            grpc.aio.insecure_channel(gateway.address) as channel,
        ):
            assert await health(channel) == NOT_SERVING
            await js.delete_stream("FILL")

            async def serving_now() -> bool:
                return await health(channel) == SERVING

            await eventually(serving_now, what="health SERVING once storage works")
    finally:
        await nc.close()
