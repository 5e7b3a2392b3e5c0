"""A Subscribe client for tests: the bidirectional stream, with what it received so far."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import grpc
from google.protobuf import duration_pb2

from gateway.config import GatewayConfig
from gateway.groups import GroupConfig
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc

Settlement = gateway_pb2.Settlement
Result = gateway_pb2.SettlementResult
GROUP = "subscribers"


def with_group(config: GatewayConfig, **settings: object) -> GatewayConfig:
    """`config` with the declared group GROUP on ORDERS (`settings` override, `name` too)
    instead of any declared group of that name."""
    group = GroupConfig(**{"name": GROUP, "stream": "ORDERS", **settings})  # type: ignore[arg-type]
    others = tuple(g for g in config.groups if g.name != group.name)
    return dataclasses.replace(config, groups=(*others, group))


class Subscriber:
    """One Subscribe call: `open` first, then what the test sends; responses are collected
    by a background reader (`deliveries`, `results`, `heartbeats`, `subscribed`, `error`)."""

    def __init__(
        self,
        stub: gateway_pb2_grpc.EventGatewayAsyncStub,
        *,
        group: str = GROUP,
        max_in_flight: int = 16,
        stream: str = "",
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._outgoing: asyncio.Queue[gateway_pb2.SubscribeRequest | None] = asyncio.Queue()
        self._outgoing.put_nowait(
            gateway_pb2.SubscribeRequest(
                open=gateway_pb2.SubscribeOpen(
                    group=group, stream=stream, max_in_flight=max_in_flight
                )
            )
        )
        self.call = stub.Subscribe(self._requests(), metadata=metadata)
        self.deliveries: list[gateway_pb2.Delivery] = []
        self.results: list[gateway_pb2.SettlementResult] = []
        self.heartbeats: list[gateway_pb2.Heartbeat] = []
        self.subscribed: gateway_pb2.Subscribed | None = None
        self.error: grpc.aio.AioRpcError | None = None
        self.settled: set[str] = set()
        self.most_unsettled = 0  # the most deliveries held unsettled at once
        self._reader = asyncio.create_task(self._read())

    async def _requests(self) -> AsyncIterator[gateway_pb2.SubscribeRequest]:
        while (request := await self._outgoing.get()) is not None:
            yield request

    async def _read(self) -> None:
        try:
            async for response in self.call:
                if response.HasField("subscribed"):
                    self.subscribed = response.subscribed
                if response.HasField("heartbeat"):
                    self.heartbeats.append(response.heartbeat)
                self.deliveries.extend(response.deliveries)
                self.results.extend(response.settled)
                self.most_unsettled = max(self.most_unsettled, self.unsettled)
        except grpc.aio.AioRpcError as exc:
            self.error = exc

    @property
    def unsettled(self) -> int:
        return sum(1 for d in self.deliveries if d.ack_id not in self.settled)

    def send(self, request: gateway_pb2.SubscribeRequest) -> None:
        self._outgoing.put_nowait(request)

    def settle(
        self,
        *ack_ids: str,
        action: gateway_pb2.Settlement.Action.ValueType = Settlement.ACTION_ACK,
        delay: float | None = None,
        reason: str = "",
    ) -> None:
        settlements = []
        for ack_id in ack_ids:
            settlement = Settlement(ack_id=ack_id, action=action, reason=reason)
            if delay is not None:
                settlement.delay.CopyFrom(duration_pb2.Duration(nanos=int(delay * 1e9)))
            settlements.append(settlement)
            if action != Settlement.ACTION_IN_PROGRESS:
                self.settled.add(ack_id)
        self.send(gateway_pb2.SubscribeRequest(settlements=settlements))

    def failure(self) -> grpc.aio.AioRpcError:
        """The error that ended the call; AssertionError while it goes on."""
        assert self.error is not None, "the call goes on"
        return self.error

    def delivery(self, index: int) -> gateway_pb2.Delivery:
        """Delivery number `index` (0-based); AssertionError while not received."""
        assert len(self.deliveries) > index, f"{len(self.deliveries)} deliveries"
        return self.deliveries[index]

    def result(self, ack_id: str) -> gateway_pb2.SettlementResult:
        """The (one) result for `ack_id`; AssertionError while there is none."""
        found = [r for r in self.results if r.ack_id == ack_id]
        assert len(found) <= 1, found
        assert found, f"no result for {ack_id} yet"
        return found[0]

    def done_writing(self) -> None:
        self._outgoing.put_nowait(None)

    async def close(self) -> None:
        """Cancel the call (a client going away)."""
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def subscribed(
    stub: gateway_pb2_grpc.EventGatewayAsyncStub, **options: object
) -> AsyncIterator[Subscriber]:
    subscriber = Subscriber(stub, **options)  # type: ignore[arg-type]
    try:
        yield subscriber
    finally:
        await subscriber.close()
