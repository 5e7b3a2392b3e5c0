"""Read: stored events of one key or subject filter, in stream order (placeholder)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from jetgate.v1 import gateway_pb2

Context = grpc.aio.ServicerContext[object, object]


class Reader:
    """Serves Read calls."""

    async def read(
        self, request: gateway_pb2.ReadRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.ReadResponse]:
        """One Read call."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Read is not built yet")
        yield gateway_pb2.ReadResponse()  # pragma: no cover
