"""Simulated power loss under a consumer group (issue 12): at-least-once holds, and no more.

nats-server's store is on `tests.support.lazyfs` (see test_power_loss). EVENTS events are
published through the gateway (all acknowledged) and synced in both modes (test_power_loss
is about the stream: here the power loss can only take the consumer's state). Then a
`consumers.Worker` handles them, each finished handler recording its event id in this
process. The first HALF (stream sequences 1..HALF) go through; the handlers of later ones
wait at a gate. Once JetStream reports the first HALF acknowledged (the consumer's ack
floor: "confirmed"), the power goes: nats-server killed (-9), the filesystem unmounted;
nats-server starts again on the same port on what the disk kept, the gate opens, and the
worker (same process, same connection: nats-py reconnects) finishes the group.

Counted per run: acknowledged (publishes the gateway answered OK), confirmed, the ack floor
the disk held at the cut, handled (distinct ids), lost (acknowledged, never handled),
handled twice, confirmed handled again.
- durability = "fsync": no acknowledged event is lost, and once the consumer's state is on
  disk (`settled`) no confirmed delivery is handled again. But nats-server answers an ack
  (and shows it in `consumer info`) before it writes the consumer's state, which it does at
  most every 100 ms per consumer, also under `sync_interval: always`
  (`consumerFileStore.flushLoop`): a power loss right after the acks can roll them back,
  i.e. redeliveries, at-least-once, which handlers absorb by being idempotent. That is why
  the worker does not wait for acked acks (`ack_sync`): see consumers/handling.py.
- durability = "lazy": the consumer's state never reaches the disk: every ack is rolled
  back, the whole first half handled again. The harness tells the modes apart.

Needs /dev/fuse, fusermount3 and libfuse3 (Debian `fuse3`) and mfusepy: `make lazyfs`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
from pathlib import Path

import grpc
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from consumers import ConsumerGroup, Delivery, Worker, WorkerStats
from gateway.config import Durability, GatewayConfig
from gateway.embedded import NatsServer
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import request, serving
from tests.integration.test_power_loss import _missing, _stored_ids, lazyfs
from tests.support.eventually import eventually

EVENTS = 300
HALF = EVENTS // 2
GROUP = "powerloss"
# Redeliveries of deliveries the power loss left pending come after ack_wait.
ACK_WAIT = 2.0
# What asking JetStream may raise while nats-server restarts.
RETRY = (AssertionError, NatsError, TimeoutError)

pytestmark = pytest.mark.skipif(bool(_missing()), reason=_missing() or "ok")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Counts:
    """What one run saw (see the module docstring)."""

    acknowledged: int
    confirmed: int
    on_disk: int
    survived: int
    handled: int
    lost: int
    handled_twice: int
    confirmed_again: int


async def _publish(stub: gateway_pb2_grpc.EventGatewayAsyncStub) -> dict[int, str]:
    """EVENTS events in batches of 100: stream sequence -> event id, of those stored OK."""
    stored: dict[int, str] = {}
    for start in range(0, EVENTS, 100):
        ids = [f"e-{n}" for n in range(start, start + 100)]
        entries = [request(f"k{n % 7}", event_id=i) for n, i in enumerate(ids)]
        reply = await stub.PublishBatch(gateway_pb2.PublishBatchRequest(entries=entries))
        for event_id, result in zip(ids, reply.results, strict=True):
            if result.HasField("ok"):
                stored[result.ok.sequence] = event_id
    return stored


def _group(handled: list[str], gate: asyncio.Event) -> ConsumerGroup:
    group = ConsumerGroup(
        GROUP, stream="ORDERS", filter_subjects=["orders.OrderPlaced.>"], ack_wait=ACK_WAIT
    )

    @group.handler(orders_pb2.OrderPlaced)
    async def handle(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        if delivery.sequence > HALF:
            await gate.wait()
        handled.append(delivery.event_id)

    return group


async def _ack_floor(nc: NATS) -> int:
    info = await nc.jetstream().consumer_info("ORDERS", GROUP)
    return int(info.ack_floor.stream_seq)


async def _finished(nc: NATS) -> bool:
    info = await nc.jetstream().consumer_info("ORDERS", GROUP)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def _group_run(
    tmp_path: Path, gateway_config: GatewayConfig, durability: Durability, *, settled: bool
) -> Counts:
    """Publish, handle the first HALF, cut the power, finish (see the module docstring);
    `settled`: cut only once the disk holds the consumer's ack floor HALF."""
    handled: list[str] = []
    gate = asyncio.Event()
    stop = asyncio.Event()
    sync_always = durability == "fsync"
    async with contextlib.AsyncExitStack() as stack:
        async with lazyfs(tmp_path / "fs") as (mnt, disk):
            server = NatsServer(mnt / "nats", sync_always=sync_always)
            server.start()
            try:
                config = dataclasses.replace(
                    gateway_config, nats_url=server.url, durability=durability
                )
                async with (
                    serving(config) as gateway,
                    grpc.aio.insecure_channel(gateway.address) as channel,
                ):
                    stub: gateway_pb2_grpc.EventGatewayAsyncStub
                    stub = gateway_pb2_grpc.EventGatewayStub(channel)
                    published = await _publish(stub)
                # The stream and its events are on disk in both modes (test_power_loss is
                # about them): what the power loss can take here is the consumer's state.
                os.mkdir(mnt / ".lazyfs-sync")
                os.rmdir(mnt / ".lazyfs-sync")
                nc = await nats.connect(
                    server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1
                )
                stack.push_async_callback(nc.close)
                worker = Worker(_group(handled, gate), nc, concurrency=8)
                running = asyncio.create_task(worker.run(stop))
                stack.push_async_callback(_stopped, stop, running)
                floor = await eventually(
                    lambda: _confirmed(nc), retry_on=RETRY, what=f"JetStream acking 1..{HALF}"
                )
                if settled:
                    await eventually(
                        lambda: _disk_ack_floor(disk) >= HALF, what="the acks of 1..HALF on disk"
                    )
                on_disk = _disk_ack_floor(disk)
            finally:
                server.kill()  # power loss: no clean shutdown, nothing more written
        gate.set()
        after = NatsServer(disk / "nats", port=server.port, sync_always=sync_always)
        after.start()
        stack.callback(after.stop)
        # The worker (same connection: nats-py reconnects) finishes the group.
        await eventually(lambda: _finished(nc), within=60, retry_on=RETRY, what="the group done")
        await _stopped(stop, running)
        stored = await _stored_ids(after)
    times = collections.Counter(handled)
    acknowledged = set(published.values())
    confirmed = {published[s] for s in range(1, floor + 1)}
    return Counts(
        acknowledged=len(acknowledged),
        confirmed=len(confirmed),
        on_disk=on_disk,
        survived=len(acknowledged & stored),
        handled=len(times),
        lost=len(acknowledged - times.keys()),
        handled_twice=sum(1 for n in times.values() if n > 1),
        confirmed_again=sum(1 for i in confirmed if times[i] > 1),
    )


async def _confirmed(nc: NATS) -> int:
    floor = await _ack_floor(nc)
    assert floor >= HALF, floor
    return floor


async def _stopped(stop: asyncio.Event, running: asyncio.Task[WorkerStats]) -> None:
    stop.set()
    await running


def _disk_ack_floor(disk: Path) -> int:
    """The stream ack floor of the group's consumer state as the lazyfs disk holds it.

    nats-server's consumer state file (`o.dat`, server/store.go encodeConsumerState):
    magic 22, version 2, then uvarints ack floor (consumer, stream), delivered, ...
    An empty or missing file (never synced) is floor 0.
    """
    path = disk / "nats/jetstream/$G/streams/ORDERS/obs" / GROUP / "o.dat"
    try:
        state = path.read_bytes()
    except FileNotFoundError:
        return 0
    if not state:
        return 0
    assert state[:2] == bytes([22, 2]), f"unknown consumer state format {state[:2]!r}"
    values, value, shift = [], 0, 0
    for byte in state[2:]:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            values.append(value)
            if len(values) == 2:
                return values[1]
            value, shift = 0, 0
    raise AssertionError(f"truncated consumer state {state!r}")


async def test_lazy_sync_rolls_back_the_acks_of_the_group(
    tmp_path: Path, gateway_config: GatewayConfig
) -> None:
    counts = await _group_run(tmp_path, gateway_config, "lazy", settled=False)
    print(f"lazy: {counts}")
    assert (counts.acknowledged, counts.confirmed) == (EVENTS, HALF)
    assert counts.on_disk == 0
    # Every ack of the first half was lost with the consumer's state: all handled again.
    assert counts.confirmed_again == HALF
    assert counts.handled == EVENTS
    assert counts.lost == 0  # the stream itself was synced


async def test_fsync_group_loses_no_event_and_handles_no_persisted_ack_again(
    tmp_path: Path, gateway_config: GatewayConfig
) -> None:
    counts = await _group_run(tmp_path, gateway_config, "fsync", settled=True)
    print(f"fsync, state written: {counts}")
    assert (counts.acknowledged, counts.confirmed) == (EVENTS, HALF)
    assert counts.handled == EVENTS
    assert counts.lost == 0
    assert counts.confirmed_again == 0


async def test_fsync_power_loss_right_after_the_acks_loses_no_event(
    tmp_path: Path, gateway_config: GatewayConfig
) -> None:
    """Cut as soon as JetStream confirmed the acks: those of the last moment may come back
    (nats-server writes consumer state after it answers acks); no event is lost."""
    counts = await _group_run(tmp_path, gateway_config, "fsync", settled=False)
    print(f"fsync, cut at once: {counts}")
    assert (counts.acknowledged, counts.confirmed) == (EVENTS, HALF)
    assert counts.handled == EVENTS
    assert counts.lost == 0
