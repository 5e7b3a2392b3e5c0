"""jetgate.client against a real gateway and nats-server: batching, results, errors."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
from nats.aio.client import Client as NATS

from gateway.config import GatewayConfig
from gateway.server import Gateway
from jetgate.client import (
    BatchSettings,
    Client,
    DeadlineExceeded,
    InvalidEvent,
    PreconditionFailed,
    Published,
    RetrySettings,
)
from jetgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import order_placed, serving
from tests.support.eventually import eventually


async def test_concurrent_publishes_share_batches_and_get_their_own_results(
    gateway: Gateway,
) -> None:
    async with Client(gateway.address) as client:
        keys = [f"o-{i}" for i in range(200)]
        keys[137] = "bad key"  # whitespace: refused, alone
        outcomes = await asyncio.gather(
            *(client.publish(order_placed(k), key=k) for k in keys), return_exceptions=True
        )
        batches = client.batches_sent

    bad = outcomes[137]
    assert isinstance(bad, InvalidEvent)
    assert not bad.retryable
    assert "event.key" in bad.field_violations, bad.field_violations
    stored = [o for i, o in enumerate(outcomes) if i != 137]
    assert all(isinstance(o, Published) for o in stored), stored
    results = [o for o in stored if isinstance(o, Published)]
    assert [r.subject for r in results] == [
        f"orders.OrderPlaced.{k}" for i, k in enumerate(keys) if i != 137
    ]
    assert len({r.sequence for r in results}) == len(results)
    assert len({r.event_id for r in results}) == len(results)
    assert not any(r.duplicate for r in results)
    assert batches < len(keys) / 4, f"{batches} request messages for {len(keys)} events"


async def test_a_violated_precondition_carries_the_conflict(gateway: Gateway) -> None:
    async with Client(gateway.address) as client:
        first = await client.publish(order_placed("o-7"), key="o-7")
        with pytest.raises(PreconditionFailed) as caught:
            await client.publish(
                order_placed("o-7"),
                key="o-7",
                precondition=event_pb2.Precondition(expected_last_subject_sequence=999),
            )
    assert not caught.value.retryable
    conflict = caught.value.conflict
    assert conflict is not None
    assert (conflict.expected_sequence, conflict.actual_sequence) == (999, first.sequence)


async def test_a_given_id_is_kept_and_a_repeat_is_a_duplicate(gateway: Gateway) -> None:
    async with Client(gateway.address) as client:
        first = await client.publish(order_placed(), key="o-42", id="o-42-placed")
        again = await client.publish(order_placed(), key="o-42", id="o-42-placed")
    assert first.event_id == "o-42-placed"
    assert (again.sequence, again.duplicate) == (first.sequence, True)


async def test_events_of_one_key_are_stored_in_call_order(gateway: Gateway) -> None:
    settings = BatchSettings(ordered_keys=True, max_events=7)
    async with Client(gateway.address, batching=settings) as client:
        calls = [(f"o-{i % 3}", i) for i in range(90)]
        results = await asyncio.gather(
            *(client.publish(order_placed(k), key=k, headers={"n": str(n)}) for k, n in calls)
        )
    for key in ("o-0", "o-1", "o-2"):
        sequences = [r.sequence for (k, _), r in zip(calls, results, strict=True) if k == key]
        assert sequences == sorted(sequences), key


async def test_a_lone_event_is_not_held_for_a_full_batch(gateway: Gateway) -> None:
    # A max_delay far beyond the wait below: the idle stream sends the lone event at once.
    settings = BatchSettings(max_delay=10.0, max_events=1000)
    async with Client(gateway.address, batching=settings) as client:
        stored = await asyncio.wait_for(client.publish(order_placed(), key="o-1"), 5.0)
        assert stored.sequence >= 1
        # Busy stream: events wait at most max_delay for more, then go.
        short = BatchSettings(max_delay=0.05, max_events=1000, max_batches_in_flight=1)
    async with Client(gateway.address, batching=short) as client:
        results = await asyncio.wait_for(
            asyncio.gather(*(client.publish(order_placed(), key=f"o-{i}") for i in range(3))),
            5.0,
        )
        assert len(results) == 3


async def test_in_flight_events_are_bounded(gateway: Gateway) -> None:
    settings = BatchSettings(max_in_flight=5)
    async with Client(gateway.address, batching=settings) as client:
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, client.in_flight)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        try:
            tasks = [
                asyncio.create_task(client.publish(order_placed(), key=f"o-{i}")) for i in range(40)
            ]
            results = await asyncio.gather(*tasks)
        finally:
            watcher.cancel()
    assert peak == 5
    assert len({r.sequence for r in results}) == 40
    assert client.in_flight == 0


async def test_a_retry_after_a_gateway_restart_stores_once(
    gateway_config: GatewayConfig, nats_url: str
) -> None:
    retry = RetrySettings(initial_backoff=0.05, max_backoff=0.2, max_attempts=100, deadline=30)
    async with serving(gateway_config) as first:
        address = first.address
        client = Client(address, retry=retry)
        await client.publish(order_placed(), key="o-0")
    # The gateway is gone: these are refused (UNAVAILABLE) and retried until it is back.
    tasks = [
        asyncio.create_task(client.publish(order_placed(), key=f"o-{i}", id=f"restart-{i}"))
        for i in range(1, 51)
    ]
    await eventually(lambda: client.batches_sent > 2)
    config = dataclasses.replace(gateway_config, listen=address)
    try:
        async with serving(config):
            results = await asyncio.gather(*tasks)
    finally:
        await client.close()
    assert [r.event_id for r in results] == [f"restart-{i}" for i in range(1, 51)]
    assert client.streams_opened >= 2

    nc = NATS()
    await nc.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info("ORDERS")
    finally:
        await nc.close()
    assert info.state.messages == 51


async def test_order_of_a_key_holds_across_retries(gateway_config: GatewayConfig) -> None:
    # Retries back off with jitter: without ordered_keys, events of one key sent together
    # and refused together are stored shuffled (this test fails with ordered_keys=False).
    retry = RetrySettings(initial_backoff=0.05, max_backoff=0.2, max_attempts=100, deadline=30)
    settings = BatchSettings(ordered_keys=True)
    async with serving(gateway_config) as first:
        address = first.address
    async with Client(address, retry=retry, batching=settings) as client:
        tasks = [
            asyncio.create_task(client.publish(order_placed(), key="o-1", headers={"n": str(n)}))
            for n in range(30)
        ]
        await eventually(lambda: client.batches_sent > 1)
        async with serving(dataclasses.replace(gateway_config, listen=address)):
            results = await asyncio.gather(*tasks)
    sequences = [r.sequence for r in results]
    assert sequences == sorted(sequences)


class _Silent(gateway_pb2_grpc.EventGatewayServicer):
    """Reads PublishStream requests and never answers (a gateway hung past any deadline)."""

    async def PublishStream(
        self, request_iterator: AsyncIterator[gateway_pb2.PublishBatchRequest], context: object
    ) -> AsyncIterator[gateway_pb2.PublishBatchResponse]:
        async for _ in request_iterator:
            pass
        await asyncio.Event().wait()
        yield gateway_pb2.PublishBatchResponse()


async def test_an_unanswered_stream_fails_its_events_after_attempt_timeout() -> None:
    server = grpc.aio.server()
    gateway_pb2_grpc.add_EventGatewayServicer_to_server(_Silent(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        retry = RetrySettings(attempt_timeout=0.2, max_attempts=2, initial_backoff=0.01)
        async with Client(f"127.0.0.1:{port}", retry=retry) as client:
            with pytest.raises(DeadlineExceeded) as caught:
                await asyncio.wait_for(client.publish(order_placed(), key="o-1"), 10.0)
        assert caught.value.attempts == 2
        assert client.streams_opened == 2
    finally:
        await server.stop(grace=None)


async def test_batches_stay_within_max_events_and_max_bytes(gateway: Gateway) -> None:
    size = order_placed().ByteSize()
    for settings, least in (
        (BatchSettings(max_events=10), 6),  # 60 events, 10 per message
        (BatchSettings(max_bytes=1024), -(-60 * size // 1024)),
    ):
        async with Client(gateway.address, batching=settings) as client:
            results = await asyncio.gather(
                *(client.publish(order_placed(), key=f"o-{i}") for i in range(60))
            )
            assert len(results) == 60
            assert client.batches_sent >= least, (settings, client.batches_sent)


async def test_ttl_is_whole_seconds_and_needs_a_stream_that_allows_it(gateway: Gateway) -> None:
    async with Client(gateway.address) as client:
        with pytest.raises(ValueError, match="whole seconds"):
            await client.publish(order_placed(), key="o-1", ttl=timedelta(seconds=1.5))
        with pytest.raises(InvalidEvent) as caught:
            await client.publish(order_placed(), key="o-1", ttl=timedelta(minutes=1))
    assert "allow" in caught.value.field_violations["event.ttl"]
    assert client.in_flight == 0
