"""Subscribe: a gRPC client joins a declared consumer group (placeholder, being built)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from jetgate.v1 import gateway_pb2

Context = grpc.aio.ServicerContext[object, object]


class Subscriptions:
    """Serves Subscribe streams."""

    async def serve(
        self, requests: AsyncIterator[gateway_pb2.SubscribeRequest], context: Context
    ) -> AsyncIterator[gateway_pb2.SubscribeResponse]:
        """One Subscribe call."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Subscribe is not built yet")
        yield gateway_pb2.SubscribeResponse()  # pragma: no cover

    async def close(self) -> None:
        """Hand back every unsettled delivery (the gateway stops)."""
