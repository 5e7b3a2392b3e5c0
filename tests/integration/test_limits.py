"""Memory and connection limits (issue 18 defect 9): requests in flight are bounded by
`max_inflight_request_bytes`, and a socket that never speaks HTTP/2 is closed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections.abc import Iterator

import grpc
import pytest
from nats.aio.client import Client

from gateway import limits
from gateway.config import GatewayConfig
from gateway.embedded import NatsServer
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import request, serving
from tests.support.eventually import eventually

MiB = 1024 * 1024
ENTRY_BYTES = 900 * 1024  # under NATS's 1 MiB max_payload with every header


def _batch(name: str, entries: int) -> gateway_pb2.PublishBatchRequest:
    return gateway_pb2.PublishBatchRequest(
        entries=[
            request(
                f"{name}-{i}",
                event_id=f"{name}-{i}",
                message=orders_pb2.OrderPlaced(order_id=name, customer_id="x" * ENTRY_BYTES),
            )
            for i in range(entries)
        ]
    )


async def _stored_ids(nc: Client) -> set[str]:
    js = nc.jetstream()
    state = (await js.stream_info("ORDERS")).state
    ids: set[str] = set()
    for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
        message = await js.get_msg("ORDERS", seq)
        ids.add((message.headers or {})["Nats-Msg-Id"])
    return ids


@contextlib.contextmanager
def _stopped(server: NatsServer) -> Iterator[None]:
    """nats-server paused (SIGSTOP): admitted publishes wait for their acks meanwhile."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


async def test_concurrent_batches_over_the_budget_are_refused_and_not_stored(
    gateway_config: GatewayConfig, nats_server: NatsServer, nc: Client
) -> None:
    # Room for one batch of 3 entries (~2.7 MiB) at a time, not two.
    config = dataclasses.replace(
        gateway_config, max_inflight_request_bytes=4 * MiB, publish_timeout=20.0
    )
    batches = [_batch(f"b{n}", 3) for n in range(8)]
    async with (
        serving(config) as gateway,
        grpc.aio.insecure_channel(gateway.address) as channel,
    ):
        stub = gateway_pb2_grpc.EventGatewayStub(channel)
        await stub.Publish(
            request("warm-up", event_id="warm-up"), timeout=10
        )  # the channel is connected
        with _stopped(nats_server):
            # The first batch admitted holds its bytes until JetStream answers, which it
            # cannot while paused: every other one arrives while the budget is full.
            calls = [asyncio.ensure_future(stub.PublishBatch(b, timeout=30)) for b in batches]

            def seven_refused() -> None:
                done = [c for c in calls if c.done()]
                assert len(done) == 7, f"{len(done)} of 8 answered"

            await eventually(seven_refused, what="7 of 8 batches refused")
        results = await asyncio.gather(*calls, return_exceptions=True)
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    stored = [(b, r) for b, r in zip(batches, results, strict=True) if not isinstance(r, Exception)]
    assert len(refused) == 7, results
    for error in refused:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        assert "retry with backoff" in (error.details() or "")
    ((batch, reply),) = stored
    assert all(result.HasField("ok") for result in reply.results), reply
    assert await _stored_ids(nc) == {"warm-up"} | {e.event.id for e in batch.entries}


async def test_a_request_larger_than_the_budget_is_refused(
    gateway_config: GatewayConfig, nc: Client
) -> None:
    config = dataclasses.replace(gateway_config, max_inflight_request_bytes=2 * MiB)
    async with (
        serving(config) as gateway,
        grpc.aio.insecure_channel(gateway.address) as channel,
    ):
        stub = gateway_pb2_grpc.EventGatewayStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.PublishBatch(_batch("big", 3), timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "exceeds the gateway's in-flight budget" in (caught.value.details() or "")

        stream = stub.PublishStream(timeout=30)
        await stream.write(_batch("small", 1))
        first = await stream.read()
        assert isinstance(first, gateway_pb2.PublishBatchResponse)
        assert first.results[0].HasField("ok")
        await stream.write(_batch("big-streamed", 3))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream.read()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        reply = await stub.PublishBatch(_batch("after", 2), timeout=30)
        assert all(result.HasField("ok") for result in reply.results)
    stored = await _stored_ids(nc)
    assert stored == {"small-0", "after-0", "after-1"}


async def test_half_open_socket_is_closed_after_the_handshake_timeout(
    gateway_config: GatewayConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "HANDSHAKE_TIMEOUT_MS", 500)
    async with serving(gateway_config) as gateway:
        host, _, port = gateway.address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            # Send nothing: no HTTP/2 preface. The server closes the socket (EOF).
            async def closed() -> bool:
                try:
                    data = await asyncio.wait_for(reader.read(65536), 1.0)
                except TimeoutError:
                    return False
                except ConnectionResetError:
                    return True
                return data == b""

            await eventually(closed, what="server closed the half-open socket")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def test_stream_messages_wait_for_room_instead_of_failing(
    gateway_config: GatewayConfig, nats_server: NatsServer, nc: Client
) -> None:
    """Two streamed messages that do not fit in the budget together: one is processed,
    the other waits for its room (nats-server is paused, so neither can finish before
    both have arrived), and both are stored."""
    config = dataclasses.replace(
        gateway_config, max_inflight_request_bytes=4 * MiB, publish_timeout=20.0
    )
    async with (
        serving(config) as gateway,
        grpc.aio.insecure_channel(gateway.address) as channel,
    ):
        stub = gateway_pb2_grpc.EventGatewayStub(channel)
        await stub.Publish(request("warm-up", event_id="warm-up"), timeout=10)
        streams = [stub.PublishStream(timeout=30) for _ in range(2)]
        with _stopped(nats_server):
            for n, stream in enumerate(streams):
                await stream.write(_batch(f"s{n}", 3))
            answers = [asyncio.ensure_future(stream.read()) for stream in streams]
            await asyncio.sleep(0)
            assert not any(answer.done() for answer in answers)
        for stream, answer in zip(streams, answers, strict=True):
            reply = await answer
            assert isinstance(reply, gateway_pb2.PublishBatchResponse), await stream.code()
            assert all(result.HasField("ok") for result in reply.results), reply
            await stream.done_writing()
            assert await stream.code() == grpc.StatusCode.OK
    assert await _stored_ids(nc) == {"warm-up"} | {f"s{n}-{i}" for n in range(2) for i in range(3)}
