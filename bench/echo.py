"""The `grpc-echo` baseline server: `python -m bench.echo --port N`.

A grpc.aio server with the gateway's shape (same EventGateway service from the jetgate.v1
stubs, same message size limits, health service, uvloop when installed unless
JETGATE_UVLOOP=0, as `jetgate serve` does) whose Publish answers an OK PublishResponse at
once, without touching NATS or validating: the cost of a unary call through grpc.aio
alone. PublishBatch and PublishStream are UNIMPLEMENTED. Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.cli import event_loop_runner
from gateway.server import MAX_MESSAGE_BYTES
from jetgate import wire
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc

SERVICE = "jetgate.v1.EventGateway"
Context = Any  # grpc.aio.ServicerContext; the generated stubs type it for sync and aio


class EchoServicer(gateway_pb2_grpc.EventGatewayServicer):
    """Publish answers a response shaped like the gateway's (id, stream, subject, sequence)."""

    def __init__(self) -> None:
        self._sequence = itertools.count(1)
        self._event_id = wire.new_event_id()

    async def Publish(
        self, request: gateway_pb2.PublishRequest, context: Context
    ) -> gateway_pb2.PublishResponse:
        return gateway_pb2.PublishResponse(
            event_id=request.event.id or self._event_id,
            stream="ORDERS",
            subject=f"orders.OrderPlaced.{request.event.key}",
            sequence=next(self._sequence),
        )

    async def PublishBatch(
        self, request: gateway_pb2.PublishBatchRequest, context: Context
    ) -> gateway_pb2.PublishBatchResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "echo answers Publish only")
        raise AssertionError("unreachable")

    async def PublishStream(
        self, request_iterator: AsyncIterator[gateway_pb2.PublishBatchRequest], context: Context
    ) -> AsyncIterator[gateway_pb2.PublishBatchResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "echo answers Publish only")
        return
        yield  # makes this an async generator, as the servicer API expects

    async def Subscribe(
        self, request_iterator: AsyncIterator[gateway_pb2.SubscribeRequest], context: Context
    ) -> AsyncIterator[gateway_pb2.SubscribeResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "echo answers Publish only")
        return
        yield

    async def Read(
        self, request: gateway_pb2.ReadRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.ReadResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "echo answers Publish only")
        return
        yield


async def serve(port: int, host: str = "127.0.0.1") -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    gateway_pb2_grpc.add_EventGatewayServicer_to_server(EchoServicer(), server)
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    for service in ("", SERVICE):
        await checks.set(service, health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    event_loop_runner()(serve(args.port, args.host))


if __name__ == "__main__":
    main()
