"""publish_timeout holds while nats-server stalls (SIGSTOP): issue 18, defect 6.

The time limit covers the whole publish, not only the acknowledgement: waiting for room in
the publish window, and handing messages to nats-py while its buffers are full. Each test
stops the server, publishes, and asserts the answers came while the server was still
stopped (a watchdog resumes it after a generous bound, so a gateway that waits for the
server answers only after the watchdog, which fails the test).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections.abc import AsyncIterator

import grpc
import pytest

from gateway.config import GatewayConfig
from gateway.embedded import NatsServer
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import order_placed, request, serving
from tests.support.eventually import eventually

Stub = gateway_pb2_grpc.EventGatewayStub
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
WATCHDOG_SECONDS = 20.0


class Stall:
    """SIGSTOP of the test's nats-server, resumed by `resume()` or the watchdog."""

    def __init__(self, server: NatsServer) -> None:
        assert server.pid is not None
        self.pid = server.pid
        self.events: list[str] = []
        self.stopped = False
        self._watchdog: asyncio.Task[None] | None = None

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped = True
        self.events.append("stopped")
        self._watchdog = asyncio.create_task(self._resume_later())

    def resume(self, why: str = "resumed") -> None:
        if self.stopped:
            self.stopped = False
            os.kill(self.pid, signal.SIGCONT)
            self.events.append(why)

    def record(self, what: str) -> None:
        self.events.append(what)

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        os.kill(self.pid, signal.SIGCONT)

    async def _resume_later(self) -> None:
        await asyncio.sleep(WATCHDOG_SECONDS)
        self.resume("resumed by the watchdog")


@contextlib.asynccontextmanager
async def _gateway(
    config: GatewayConfig, nats_server: NatsServer
) -> AsyncIterator[tuple[Stub, Stall]]:
    async with (
        serving(config) as gateway,
        grpc.aio.insecure_channel(gateway.address) as channel,
    ):
        stub = gateway_pb2_grpc.EventGatewayStub(channel)
        assert (await stub.Publish(request("warm-up"))).sequence == 1
        stall = Stall(nats_server)
        try:
            yield stub, stall
        finally:
            await stall.close()


async def _recovers(stub: Stub) -> None:
    async def stored() -> bool:
        try:
            await stub.Publish(request("after"))
        except grpc.aio.AioRpcError:
            return False
        return True

    await eventually(stored, what="a publish succeeds after SIGCONT")


async def test_waiting_for_window_room_is_within_publish_timeout(
    gateway_config: GatewayConfig, nats_server: NatsServer
) -> None:
    config = dataclasses.replace(gateway_config, publish_timeout=1.0, max_pending=4)
    async with _gateway(config, nats_server) as (stub, stall):
        stall.stop()
        # 20 entries through a window of 4: 16 wait for room that never comes.
        entries = [request(f"w-{i}", event_id=f"w-{i}") for i in range(20)]
        reply = await stub.PublishBatch(gateway_pb2.PublishBatchRequest(entries=entries))
        stall.record("batch answered")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Publish(request("single"))
        stall.record("publish answered")
        stall.resume()

        assert stall.events == ["stopped", "batch answered", "publish answered", "resumed"]
        assert [r.error.code for r in reply.results] == [DEADLINE_EXCEEDED] * 20
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await _recovers(stub)


def _big(key: str, size: int) -> gateway_pb2.PublishRequest:
    req = request(key, event_id=key)
    # Unknown field 15 (length-delimited, 3-byte length): still a valid OrderPlaced.
    length = bytes([(size & 0x7F) | 0x80, ((size >> 7) & 0x7F) | 0x80, size >> 14])
    req.event.payload.value = order_placed(key).SerializeToString() + b"\x7a" + length + b"x" * size
    return req


async def test_full_outgoing_buffers_are_within_publish_timeout(
    gateway_config: GatewayConfig, nats_server: NatsServer
) -> None:
    config = dataclasses.replace(gateway_config, publish_timeout=1.0)
    async with _gateway(config, nats_server) as (stub, stall):
        stall.stop()
        # 40 MB: more than the socket buffers and nats-py's pending buffer (2 MiB) take, so
        # nats-py's publish waits for a flush the stopped server never allows.
        entries = [_big(f"b-{i}", 1_000_000) for i in range(40)]
        reply = await stub.PublishBatch(gateway_pb2.PublishBatchRequest(entries=entries))
        stall.record("batch answered")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Publish(_big("single", 1_000_000))
        stall.record("publish answered")
        stall.resume()

        assert stall.events == ["stopped", "batch answered", "publish answered", "resumed"]
        assert {r.error.code for r in reply.results} == {DEADLINE_EXCEEDED}
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await _recovers(stub)
