"""`Client`: publish typed events through a jetgate gateway, batched and retried.

    async with Client("127.0.0.1:50051") as client:
        stored = await client.publish(OrderPlaced(order_id="o-42"), key="o-42")

Each `publish()` waits for its own event's result (`Published`, or a `PublishError` with
the decoded details) while concurrent calls share PublishStream request messages (see
`jetgate.client.batcher`). The client gives every event without an id a UUIDv7
(`jetgate.wire.new_event_id`) before the first attempt, so its own retries are stored once.

Trace context: events of different traces share a request message, so the call's gRPC
metadata cannot carry it. Each publish() puts the caller's current OpenTelemetry context
(W3C `traceparent`, `tracestate`, `baggage`, by the globally configured propagator) into
its entry's `trace_context`; the gateway parents that event's producer span on it. The
client makes no span of its own: the caller's span is the event's parent. The stream
itself is opened outside any caller's context (it outlives them all).

Connection (`jetgate.client.connection`): one address, several (a channel each, streams
rotating over them), TLS/mTLS and a bearer token, all in one `ConnectionSettings`.
"""

from __future__ import annotations

import asyncio
import time as _time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType

import grpc
from google.protobuf import any_pb2, duration_pb2, timestamp_pb2
from google.protobuf.message import Message
from opentelemetry import propagate

from jetgate import wire
from jetgate.client.batcher import ENTRY_OVERHEAD, Batcher, Pending
from jetgate.client.connection import ConnectionSettings, Metadata, connection_of
from jetgate.client.result import Published
from jetgate.client.settings import BatchSettings, RetrySettings
from jetgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc


class Client:
    """A batching, retrying publisher to one or several gateways (or a channel of yours).

    `target`: `host:port` (plaintext), several of them, or a `ConnectionSettings` (addresses,
    TLS, token); or pass `channel` (then the client never closes it). `metadata`: more call
    metadata sent with each stream. Use one client per process and event loop.
    """

    def __init__(
        self,
        target: str | Sequence[str] | ConnectionSettings | None = None,
        *,
        channel: grpc.aio.Channel | None = None,
        batching: BatchSettings | None = None,
        retry: RetrySettings | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        source: str = "",
    ) -> None:
        if (target is None) == (channel is None):
            raise ValueError("give either target or channel")
        self._connection = None if target is None else connection_of(target)
        self._channels: list[grpc.aio.Channel] = [] if channel is None else [channel]
        self._owns_channels = channel is None
        self._batching = batching or BatchSettings()
        self._retry = retry or RetrySettings()
        self._metadata: Metadata = tuple(metadata)
        self._source = source
        self._batcher: Batcher | None = None
        self._room: asyncio.Semaphore | None = None
        self._closed = False
        self._in_flight = 0

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def in_flight(self) -> int:
        """Events inside the client now (queued, sent, or waiting for a retry)."""
        return self._in_flight

    @property
    def batches_sent(self) -> int:
        """PublishStream request messages sent so far (retries included)."""
        return 0 if self._batcher is None else self._batcher.batches_sent

    @property
    def streams_opened(self) -> int:
        """PublishStream calls opened so far (a new one after each broken or retired one)."""
        return 0 if self._batcher is None else self._batcher.streams_opened

    @property
    def streams_per_address(self) -> tuple[int, ...]:
        """PublishStream calls opened so far to each address, in the settings' order."""
        return () if self._batcher is None else tuple(self._batcher.streams_per_address)

    async def publish(
        self,
        message: Message,
        *,
        key: str,
        id: str = "",  # the Event field's name
        headers: Mapping[str, str] | None = None,
        precondition: event_pb2.Precondition | None = None,
        ttl: timedelta | int | None = None,
        source: str = "",
        time: datetime | None = None,
    ) -> Published:
        """Store `message` (any registered protobuf type) under `key`; its result.

        `id`: the event id (default: a fresh UUIDv7, kept across the client's retries);
        `ttl`: whole seconds (the stream needs allow_msg_ttl); `time`: when it happened
        (default: when the gateway receives it). Raises a `PublishError` subclass
        (`InvalidEvent`, `PreconditionFailed`, ...) when the event is not stored. Waits for
        room when `max_in_flight` events are already in the client.
        """
        if self._closed:
            raise RuntimeError("client closed")
        batcher, room = self._start()
        payload = any_pb2.Any()
        payload.Pack(message)
        event = event_pb2.Event(
            id=id or wire.new_event_id(),
            key=key,
            payload=payload,
            headers=dict(headers or {}),
            source=source or self._source,
        )
        if ttl is not None:
            seconds = ttl if isinstance(ttl, int) else ttl.total_seconds()
            if seconds != int(seconds):
                raise ValueError(f"ttl must be whole seconds, not {seconds}")
            event.ttl.CopyFrom(duration_pb2.Duration(seconds=int(seconds)))
        if time is not None:
            stamp = timestamp_pb2.Timestamp()
            stamp.FromDatetime(time)
            event.time.CopyFrom(stamp)
        request = gateway_pb2.PublishRequest(event=event, precondition=precondition)
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        if carrier:
            request.trace_context.update(carrier)
        await room.acquire()
        self._in_flight += 1
        loop = asyncio.get_running_loop()
        pending = Pending(
            request=request,
            event_id=event.id,
            key=key,
            size=request.ByteSize() + ENTRY_OVERHEAD,
            future=loop.create_future(),
            deadline=_time.monotonic() + self._retry.deadline,
            on_settled=self._settled,
        )
        batcher.submit(pending)
        return await pending.future

    async def close(self) -> None:
        """Stop: events not yet settled fail with UNAVAILABLE; the own channel closes."""
        self._closed = True
        if self._batcher is not None:
            await self._batcher.close()
        if self._owns_channels:
            for channel in self._channels:
                await channel.close()

    async def flush(self) -> None:
        """Wait until every event published so far is settled."""
        if self._room is None:
            return
        for _ in range(self._batching.max_in_flight):
            await self._room.acquire()
        for _ in range(self._batching.max_in_flight):
            self._room.release()

    def _settled(self) -> None:
        self._in_flight -= 1
        assert self._room is not None
        self._room.release()

    def _start(self) -> tuple[Batcher, asyncio.Semaphore]:
        """The batcher and the in-flight bound, made on first use (inside the event loop)."""
        if self._batcher is None or self._room is None:
            connection = self._connection
            if connection is not None and not self._channels:
                self._channels = [connection.channel(a) for a in connection.addresses]
            channels = tuple(self._channels)
            extra = self._metadata

            async def metadata() -> Metadata:
                own = () if connection is None else await connection.metadata()
                return (*own, *extra)

            def healthy(index: int) -> bool:
                state = channels[index].get_state(try_to_connect=False)
                return state is not grpc.ChannelConnectivity.TRANSIENT_FAILURE

            self._batcher = Batcher(
                [gateway_pb2_grpc.EventGatewayStub(c) for c in channels],
                batching=self._batching,
                retry=self._retry,
                metadata=metadata,
                healthy=healthy,
                stream_max_age=None if connection is None else connection.stream_max_age,
            )
            self._room = asyncio.Semaphore(self._batching.max_in_flight)
        return self._batcher, self._room
