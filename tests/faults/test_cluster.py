"""Chaos against a real 3-node JetStream cluster on loopback: leader changes and a lost node
are invisible to clients (issue 11).

An in-process gateway (group commit, as `durability = "fsync"` runs it) serves clients
that publish, unary and PublishBatch, each event once with its own id, into the R3 stream
ORDERS while the test kill -9's the stream's leader, waits for publishing to go on through
the new one, restarts the killed node (its replica catches up), and forces a leader
step-down (`$JS.API.STREAM.LEADER.STEPDOWN.ORDERS`). The clients run for a bounded time:
until publishing has gone on after each change. Then every acknowledged event id must be
in the stream exactly once, no event stored twice, and no acknowledgement marked as a
duplicate (each event was sent once). Errors that reached the clients are counted and
reported (target 0: every change resolves within publish_timeout, here 30 s for a kill -9,
whose election alone may take several seconds).

The demo pipeline: `jetgate consume` processes of billing and shipping (consumers/demo.py,
follow-ups through the in-process gateway) while a task keeps publishing OrderPlaced
batches; the test kill -9's the stream's leader, then the billing consumer's leader
(consumer info `cluster.leader`), each time waiting for more orders shipped, restarting
the node (the cluster whole again) and waiting for more again. Then every stored
OrderPlaced (at least every acknowledged one) has exactly one OrderPaid and one
OrderShipped of its key, and the DLQ is empty.

No durations are asserted: every wait is a bounded `eventually`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import nats
import pytest
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.api import RawStreamMsg

from consumers import consumer, demo
from gateway.cluster import NatsCluster, replicated
from gateway.config import load_config
from gateway.streams import reconcile_streams
from jetgate import wire
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import REPO, request, serving
from tests.integration.test_demo_pipeline import Workers
from tests.support.eventually import eventually

STREAM = "ORDERS"
CLIENTS = 4  # half unary, half PublishBatch
BATCH = 20
PROGRESS = 150  # acknowledgements after each change that show publishing goes on
WAIT = 120.0  # s: the longest any one step may take on a busy 2-core machine
TRANSIENT = (AssertionError, TimeoutError, NatsError)


@dataclasses.dataclass
class Tally:
    acked: set[str] = dataclasses.field(default_factory=set)
    duplicates_acked: int = 0
    errors: Counter[str] = dataclasses.field(default_factory=Counter)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    nodes = NatsCluster(tmp_path / "nats", size=3, sync_always=True)
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


async def _publish(address: str, client: int, tally: Tally, stop: asyncio.Event) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.EventGatewayStub(channel)
        n = 0
        while not stop.is_set():
            n += 1
            ids = [f"c{client}-{n}-{i}" for i in range(1 if client % 2 else BATCH)]
            try:
                if client % 2:
                    reply = await stub.Publish(request(ids[0], event_id=ids[0]), timeout=WAIT)
                    tally.acked.add(reply.event_id)
                    tally.duplicates_acked += reply.duplicate
                    continue
                entries = [request(i, event_id=i) for i in ids]
                batch = await stub.PublishBatch(
                    gateway_pb2.PublishBatchRequest(entries=entries), timeout=WAIT
                )
            except grpc.aio.AioRpcError as exc:
                tally.errors[exc.code().name] += 1
                continue
            for result in batch.results:
                if result.HasField("ok"):
                    tally.acked.add(result.ok.event_id)
                    tally.duplicates_acked += result.ok.duplicate
                else:
                    tally.errors[f"entry {result.error.code}: {result.error.message}"] += 1


async def _leader(nc: Client, names: set[str]) -> str:
    info = await nc.jetstream().stream_info(STREAM)
    assert info.cluster is not None
    assert info.cluster.leader in names, info.cluster
    return str(info.cluster.leader)


async def _progress(tally: Tally) -> None:
    target = len(tally.acked) + PROGRESS
    await eventually(lambda: len(tally.acked) >= target, within=WAIT, what="publishing goes on")


async def _stored_ids(nc: Client) -> Counter[str]:
    """The event id of every message in the stream, counted (one get per sequence: simple,
    and each get is retried on its own while the cluster settles)."""
    js = nc.jetstream()
    state = (await eventually(lambda: js.stream_info(STREAM), retry_on=TRANSIENT)).state
    stored: Counter[str] = Counter()
    for seq in range(state.first_seq, state.last_seq + 1):

        async def get(seq: int = seq) -> RawStreamMsg:
            return await js.get_msg(STREAM, seq)

        msg = await eventually(get, retry_on=TRANSIENT)
        stored[(msg.headers or {})[wire.MSG_ID]] += 1
    return stored


async def test_leader_kill_restart_and_step_down_lose_and_double_nothing(
    cluster: NatsCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(REPO / "jetgate.toml", env={})
    config = dataclasses.replace(
        replicated(config, 3), nats_url=cluster.url, listen="127.0.0.1:0", publish_timeout=30.0
    )
    names = {node.name for node in cluster.nodes}
    tally, stop = Tally(), asyncio.Event()
    nc = await nats.connect(cluster.url.split(","), max_reconnect_attempts=-1)
    try:
        async with serving(config) as gateway:
            clients = [
                asyncio.create_task(_publish(gateway.address, c, tally, stop))
                for c in range(CLIENTS)
            ]
            try:
                await _progress(tally)
                first = await eventually(lambda: _leader(nc, names), retry_on=TRANSIENT)
                killed = next(node for node in cluster.nodes if node.name == first)
                killed.kill()

                async def moved_from(old: str) -> str:
                    now = await _leader(nc, names)
                    assert now != old
                    return now

                second = await eventually(
                    lambda: moved_from(first), within=WAIT, retry_on=TRANSIENT
                )
                await _progress(tally)
                killed.start()

                async def caught_up() -> None:
                    info = await nc.jetstream().stream_info(STREAM)
                    assert info.cluster is not None
                    back = [r for r in info.cluster.replicas or [] if r.name == first]
                    assert back, info.cluster
                    assert back[0].current, info.cluster

                await eventually(caught_up, within=WAIT, retry_on=TRANSIENT)

                async def step_down() -> None:
                    reply = await nc.request(
                        f"$JS.API.STREAM.LEADER.STEPDOWN.{STREAM}", b"", timeout=10
                    )
                    assert json.loads(reply.data).get("success"), reply.data

                await eventually(step_down, within=WAIT, retry_on=TRANSIENT)
                await eventually(lambda: moved_from(second), within=WAIT, retry_on=TRANSIENT)
                await _progress(tally)
            finally:
                stop.set()
                await asyncio.gather(*clients)
        stored = await _stored_ids(nc)
    finally:
        await nc.close()

    doubled = {i: n for i, n in stored.items() if n > 1}
    lost = tally.acked - set(stored)
    with capsys.disabled():
        print(
            f"\nchaos (kill -9 leader, restart, step-down): acked {len(tally.acked)}, "
            f"stored {len(stored)}, stored twice {len(doubled)}, acked as duplicate "
            f"{tally.duplicates_acked}, client errors {sum(tally.errors.values())} "
            f"{dict(tally.errors)}"
        )
    assert not lost, f"{len(lost)} acknowledged events not stored, e.g. {sorted(lost)[:5]}"
    assert not doubled, f"{len(doubled)} events stored twice, e.g. {sorted(doubled)[:5]}"
    assert tally.duplicates_acked == 0
    # Every change here resolves within publish_timeout: the gateway hides all of them.
    assert not tally.errors, f"errors reached the clients: {dict(tally.errors)}"


# The demo pipeline through a kill -9 of the stream leader and of the billing consumer's leader.

ORDERS_BATCH = 10  # OrderPlaced per PublishBatch
PIPELINE_PROGRESS = 30  # orders shipped after each change that show the pipeline goes on


async def _place_orders(address: str, placed: set[str], stop: asyncio.Event) -> None:
    """PublishBatch OrderPlaced events with fresh keys until `stop`; `placed`: acked keys."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.EventGatewayStub(channel)
        n = 0
        while not stop.is_set():
            keys = [f"o-{n + i}" for i in range(ORDERS_BATCH)]
            n += ORDERS_BATCH
            try:
                reply = await stub.PublishBatch(
                    gateway_pb2.PublishBatchRequest(entries=[request(k) for k in keys]),
                    timeout=WAIT,
                )
            except grpc.aio.AioRpcError:
                continue  # counted by the stream: only stored orders must be paid
            placed.update(k for k, r in zip(keys, reply.results, strict=True) if r.HasField("ok"))


async def _counts(nc: Client, event_type: str) -> Counter[str]:
    """How many `event_type` events the stream holds, by key."""
    info = await nc.jetstream().stream_info(STREAM, subjects_filter=f"orders.{event_type}.>")
    prefix = f"orders.{event_type}."
    return Counter({s.removeprefix(prefix): n for s, n in (info.state.subjects or {}).items()})


async def _consumer_leader(nc: Client, group: str, names: set[str]) -> str:
    info = await nc.jetstream().consumer_info(STREAM, group)
    assert info.cluster is not None
    assert info.cluster.leader in names, info.cluster
    return str(info.cluster.leader)


async def test_demo_pipeline_pays_and_ships_each_order_once_through_leader_kills(
    cluster: NatsCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(REPO / "jetgate.toml", env={})
    config = dataclasses.replace(
        replicated(config, 3), nats_url=cluster.url, listen="127.0.0.1:0", publish_timeout=30.0
    )
    names = {node.name for node in cluster.nodes}
    placed: set[str] = set()
    stop = asyncio.Event()
    nc = await nats.connect(cluster.url.split(","), max_reconnect_attempts=-1)
    try:
        async with serving(config) as gateway:
            workers = Workers(cluster.url, gateway.address, tmp_path)
            try:
                await workers.start("billing")
                await workers.start("shipping")
                publisher = asyncio.create_task(_place_orders(gateway.address, placed, stop))

                async def shipped_more(than: int) -> bool:
                    return len(await _counts(nc, "OrderShipped")) >= than + PIPELINE_PROGRESS

                async def goes_on() -> None:
                    shipped = len(
                        await eventually(lambda: _counts(nc, "OrderShipped"), retry_on=TRANSIENT)
                    )
                    await eventually(
                        lambda: shipped_more(shipped),
                        within=WAIT,
                        retry_on=TRANSIENT,
                        what="the pipeline goes on",
                    )

                async def kill_and_restart(leader: Callable[[], Awaitable[str]]) -> None:
                    first = await eventually(leader, within=WAIT, retry_on=TRANSIENT)
                    killed = next(node for node in cluster.nodes if node.name == first)
                    killed.kill()

                    async def moved() -> None:
                        assert await leader() != first

                    await eventually(moved, within=WAIT, retry_on=TRANSIENT)
                    await goes_on()
                    killed.start()
                    await asyncio.to_thread(cluster.wait_ready, WAIT)
                    await goes_on()

                try:
                    await goes_on()
                    await kill_and_restart(lambda: _leader(nc, names))
                    await kill_and_restart(lambda: _consumer_leader(nc, "billing", names))
                finally:
                    stop.set()
                    await publisher

                async def settled(group: str) -> None:
                    info = await nc.jetstream().consumer_info(STREAM, group)
                    assert (info.num_pending, info.num_ack_pending) == (0, 0), info

                async def all_shipped() -> None:
                    stored = set(await _counts(nc, "OrderPlaced"))
                    assert set(await _counts(nc, "OrderShipped")) == stored
                    await settled("billing")
                    await settled("shipping")

                await eventually(all_shipped, within=WAIT, retry_on=TRANSIENT)
            finally:
                await workers.stop_all()
        counts = {t: await _counts(nc, t) for t in ("OrderPlaced", "OrderPaid", "OrderShipped")}
        dlq = (await nc.jetstream().stream_info("DLQ")).state.messages
    finally:
        await nc.close()

    stored = set(counts["OrderPlaced"])
    with capsys.disabled():
        print(
            f"\npipeline chaos (kill -9 stream leader, then billing consumer leader): placed "
            f"(acked) {len(placed)}, stored {len(stored)}, "
            + ", ".join(f"{t} {sum(c.values())}" for t, c in counts.items())
            + f", DLQ {dlq}"
        )
    assert placed <= stored, sorted(placed - stored)[:5]
    for event_type, by_key in counts.items():
        assert by_key == dict.fromkeys(stored, 1), event_type
    assert dlq == 0


async def test_a_worker_replicates_the_dead_letter_stream_like_its_group_stream(
    cluster: NatsCluster,
) -> None:
    # Regression: workers created an R1 DLQ; with its node killed every worker's setup
    # waited on it and the pipeline above stopped for good.
    config = replicated(load_config(REPO / "jetgate.toml", env={}), 3)
    nc = await nats.connect(cluster.url.split(","))
    try:
        js = nc.jetstream()
        await eventually(
            lambda: reconcile_streams(js, config.streams, {}), within=WAIT, retry_on=TRANSIENT
        )
        assert await eventually(lambda: consumer.ensure(js, demo.billing), within=WAIT)
        assert (await js.stream_info(wire.DEAD_LETTER_STREAM)).config.num_replicas == 3
    finally:
        await nc.close()
