"""A live gateway for the fuzz tests: real nats-server, in-process gateway, a worker.

Hypothesis drives synchronous test functions, and every example must talk to the same
long-lived gateway, so everything asynchronous lives on one event loop in a background
thread (`LiveGateway.call` runs a coroutine there and waits for it). The pieces:
- a nats-server (tests' `NatsServer`, default limits: `max_payload` 1 MiB),
- a `gateway.server.Gateway` on the demo routes, ORDERS with `allow_msg_ttl` so that ttl
  values reach JetStream, `max_batch_entries` small enough to be exceeded cheaply,
- a nats-py client to read stored messages back (`$JS.API.STREAM.MSG.GET`, raw headers),
- a worker of consumer group `fuzz` (every routed order type) that records what each
  delivery carried, by stream sequence: the second read-back path.

Every example starts from a SERVING gateway: when one left it broken (the property that
caught it has failed already), `ensure_serving` replaces it, so the example hypothesis
shrinks to is the one that breaks it, not merely one run after.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import threading
from collections.abc import Awaitable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import nats
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.client import Client

from consumers import ConsumerGroup, Delivery, Worker
from gateway.config import GatewayConfig, load_config
from gateway.embedded import NatsServer
from gateway.server import Gateway
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import gateway_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
STREAM = "ORDERS"
MAX_BATCH_ENTRIES = 16
SERVICE = "jetgate.v1.EventGateway"
ROUTED = (
    orders_pb2.OrderPlaced,
    orders_pb2.OrderPaid,
    orders_pb2.OrderShipped,
    orders_pb2.OrderCancelled,
)
ROUTED_TYPES: dict[str, type[Message]] = {kind.DESCRIPTOR.full_name: kind for kind in ROUTED}
T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredMessage:
    """One stream message as JetStream returns it: subject, payload, headers in order."""

    subject: str
    data: bytes
    headers: list[tuple[bytes, bytes]]

    def header(self, name: str) -> str | None:
        wanted = name.encode()
        values = [v for k, v in self.headers if k == wanted]
        return values[0].decode() if values else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Handled:
    """What the worker's handler got for one delivery. A handler gets the parsed event, not
    the NATS message (`Delivery` holds nothing that settles it): `data` is the event
    serialized again (deterministic), compared with the sent payload parsed the same way."""

    data: bytes
    headers: dict[str, object]
    event_id: str
    event_type: str
    key: str
    source: str


def parse_header_block(block: bytes) -> list[tuple[bytes, bytes]]:
    """The `name: value` lines of a raw `NATS/1.0` header block, bytes as stored."""
    lines = block.split(b"\r\n")
    assert lines[0].startswith(b"NATS/1.0"), block[:40]
    pairs: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        assert sep, line[:80]
        pairs.append((name, value.strip(b" \t")))
    return pairs


class LiveGateway:
    """The fuzz target; `start()` then `close()`. All methods are called from the test thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.server = NatsServer(directory / "nats")
        self.restarts = 0
        self.handled: dict[int, Handled] = {}
        # Every event id the gateway answered OK for (ALREADY_EXISTS is right for those only).
        self.acknowledged: set[str] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fuzz-loop")
        self._gateway: Gateway | None = None
        self._channel: grpc.aio.Channel | None = None
        self._nc: Client | None = None
        self._worker_nc: Client | None = None
        self._stop_worker = asyncio.Event()
        self._worker_task: asyncio.Task[Any] | None = None
        self.config: GatewayConfig | None = None

    # -- test-thread API -------------------------------------------------------------
    def call(self, work: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run `work` on the gateway's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout)

    def start(self) -> None:
        self.server.start()
        self._thread.start()
        self.call(self._start())

    def close(self) -> None:
        try:
            if self._thread.is_alive():
                self.call(self._close())
        finally:
            if self._thread.is_alive():
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(30)
            self._loop.close()
            self.server.stop()

    @property
    def channel(self) -> grpc.aio.Channel:
        assert self._channel is not None
        return self._channel

    @property
    def stub(self) -> gateway_pb2_grpc.EventGatewayAsyncStub:
        return gateway_pb2_grpc.EventGatewayStub(self.channel)

    @property
    def max_payload(self) -> int:
        assert self._nc is not None
        return int(self._nc.max_payload)

    # -- coroutines (run on the loop) -----------------------------------------------
    async def _start(self) -> None:
        base = load_config(REPO / "jetgate.toml", env={})
        streams = tuple(
            dataclasses.replace(s, allow_msg_ttl=True) if s.name == STREAM else s
            for s in base.streams
        )
        self.config = dataclasses.replace(
            base,
            nats_url=self.server.url,
            listen="127.0.0.1:0",
            publish_timeout=10.0,
            max_batch_entries=MAX_BATCH_ENTRIES,
            streams=streams,
            workers=(),
        )
        await self._start_gateway()
        self._nc = await nats.connect(self.server.url, name="fuzz-reader")
        self._worker_nc = await nats.connect(self.server.url, name="fuzz-worker")
        worker = Worker(_recording_group(self.handled), self._worker_nc, pull_expires=1.0)
        self._worker_task = asyncio.create_task(worker.run(self._stop_worker))
        await asyncio.wait_for(worker.ready.wait(), 30)

    async def _start_gateway(self) -> None:
        assert self.config is not None
        self._gateway = Gateway(self.config)
        await self._gateway.start()
        self._channel = grpc.aio.insecure_channel(self._gateway.address)

    async def _stop_gateway(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        if self._gateway is not None:
            await self._gateway.stop(grace=0.5)
        self._channel = self._gateway = None

    async def _close(self) -> None:
        self._stop_worker.set()
        if self._worker_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._worker_task, 30)
        await self._stop_gateway()
        for nc in (self._nc, self._worker_nc):
            if nc is not None and not nc.is_closed:
                await nc.close()

    async def health(self) -> int:
        """The gateway's health status for the EventGateway service (UNKNOWN on no answer)."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
        except grpc.aio.AioRpcError:
            return int(health_pb2.HealthCheckResponse.UNKNOWN)
        return int(reply.status)

    async def ensure_serving(self) -> None:
        """A SERVING gateway for the next example: replaced when a previous one broke it."""
        if await self.health() == health_pb2.HealthCheckResponse.SERVING:
            return
        self.restarts += 1
        await self._stop_gateway()
        await self._start_gateway()

    async def last_sequence(self) -> int:
        """The stream's last sequence: grows by one per stored message, never shrinks (TTL)."""
        reply = await self._api(f"$JS.API.STREAM.INFO.{STREAM}", b"")
        return int(reply["state"]["last_seq"])

    async def stored(self, sequence: int) -> StoredMessage | None:
        """Stream message `sequence` as stored (None when there is none)."""
        reply = await self._api(
            f"$JS.API.STREAM.MSG.GET.{STREAM}", json.dumps({"seq": sequence}).encode()
        )
        if "error" in reply:
            return None
        message = reply["message"]
        block = base64.b64decode(message.get("hdrs") or "")
        return StoredMessage(
            subject=message["subject"],
            data=base64.b64decode(message.get("data") or ""),
            headers=parse_header_block(block) if block else [],
        )

    async def _api(self, subject: str, payload: bytes) -> Mapping[str, Any]:
        assert self._nc is not None
        reply = await self._nc.request(subject, payload, timeout=10)
        decoded: Mapping[str, Any] = json.loads(reply.data)
        return decoded


def _recording_group(handled: dict[int, Handled]) -> ConsumerGroup:
    group = ConsumerGroup(
        "fuzz",
        stream=STREAM,
        filter_subjects=["orders.>"],
        ack_wait=30.0,
        backoff=(0.2,),
        concurrency=8,
    )

    async def record(event: Message, delivery: Delivery) -> None:
        handled[delivery.sequence] = Handled(
            data=event.SerializeToString(deterministic=True),
            headers=dict(delivery.headers),
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            key=delivery.key,
            source=delivery.source,
        )

    for kind in ROUTED:
        group.handler(kind)(record)
    return group


async def gather_all(*work: Awaitable[T]) -> list[T]:
    return list(await asyncio.gather(*work))
