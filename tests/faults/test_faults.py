"""Faults against real processes: nats-server, `jetgate serve` and two workers.

Each scenario publishes a few hundred events through the gateway (retrying refused ones
with the same id, as the API tells clients to), injects one fault while they flow, and
then asserts the same invariants (`Cluster.check_invariants`): every acknowledged event
stored exactly once, every stored event handled or dead-lettered, the gateway SERVING and
every worker pulling. No fixed sleeps: every wait is a bounded `eventually`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from nats.js.api import StreamConfig

from consumers import deadletter
from gateway.embedded import NatsServer
from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import gateway_pb2
from tests.faults.harness import CODES, GROUP, RETRYABLE, SERVING, STREAM, Cluster, Load
from tests.fuzz.strategies import MAX_PAYLOAD, pad_to
from tests.integration.conftest import request

# Events per scenario: a few hundred in `make test`; `make faults` runs more.
EVENTS = int(os.environ.get("JETGATE_FAULTS_EVENTS", "300"))
ClusterFactory = Callable[..., Awaitable[Cluster]]


@pytest.fixture
async def make_cluster(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[ClusterFactory]:
    """Starts a `Cluster` on the test's nats-server (once per test); stops it after."""
    started: list[Cluster] = []

    async def make(**options: object) -> Cluster:
        cluster = Cluster(nats_server, tmp_path, **options)  # type: ignore[arg-type]
        started.append(cluster)
        await cluster.start()
        return cluster

    try:
        yield make
    finally:
        for cluster in started:
            await cluster.close()


async def with_fault(cluster: Cluster, fault: Callable[[Load], Awaitable[None]]) -> Load:
    """Publish EVENTS events; run `fault` once a third is acknowledged; wait for them all."""
    load = Load(cluster.stub, EVENTS)
    task = asyncio.create_task(load.run())
    try:
        await cluster.eventually(
            lambda: len(load.acknowledged) >= EVENTS // 3 or task.done(), "a third acknowledged"
        )
        await fault(load)
        await asyncio.wait_for(asyncio.shield(task), 120)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    unexpected = load.unexpected()
    assert not unexpected, f"refusals a fault must not cause: {unexpected} ({load.last_refusal})"
    assert len(load.acknowledged) == EVENTS
    return load


async def not_serving_within(cluster: Cluster, within: float) -> bool:
    """Whether the gateway's health leaves SERVING within `within` seconds."""

    async def not_serving() -> None:
        assert await cluster.health() != SERVING

    try:
        await cluster.eventually(not_serving, "gateway not SERVING", within=within)
    except AssertionError:
        return False
    return True


async def refused_more(cluster: Cluster, load: Load) -> None:
    """Until the load has had one more retryable refusal (the fault really hit it)."""

    def retryable() -> int:
        return sum(load.refusals[code.name] for code in RETRYABLE)

    seen = retryable()
    await cluster.eventually(lambda: retryable() > seen, "a refused publish")


# -- nats-server ---------------------------------------------------------------------
async def test_nats_server_kill_9(make_cluster: ClusterFactory, nats_server: NatsServer) -> None:
    cluster = await make_cluster()

    async def fault(load: Load) -> None:
        nats_server.kill()
        assert await not_serving_within(cluster, 30.0), "gateway SERVING without NATS"
        nats_server.start()

    load = await with_fault(cluster, fault)
    await cluster.check_invariants(load.acknowledged)


async def test_nats_server_sigstop(make_cluster: ClusterFactory, nats_server: NatsServer) -> None:
    """A stalled nats-server: publishes end within their deadline, and health says so
    within a bounded time (issue 18 defect 6)."""
    cluster = await make_cluster()
    noticed = False

    async def fault(load: Load) -> None:
        nonlocal noticed
        assert nats_server.pid is not None
        os.kill(nats_server.pid, signal.SIGSTOP)
        try:
            await refused_more(cluster, load)
            noticed = await not_serving_within(cluster, 20.0)
        finally:
            os.kill(nats_server.pid, signal.SIGCONT)

    load = await with_fault(cluster, fault)
    await cluster.check_invariants(load.acknowledged)
    assert noticed, "health stayed SERVING for 20 s while nats-server was stopped"


# -- gateway -------------------------------------------------------------------------
async def test_gateway_kill_9(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()

    async def fault(load: Load) -> None:
        await cluster.gateway.kill()
        await refused_more(cluster, load)
        await cluster.gateway.start()  # same port: the client's channel reconnects

    load = await with_fault(cluster, fault)
    await cluster.check_invariants(load.acknowledged)


async def test_gateway_sigstop(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()

    async def fault(load: Load) -> None:
        cluster.gateway.signal(signal.SIGSTOP)
        try:
            await refused_more(cluster, load)
        finally:
            cluster.gateway.signal(signal.SIGCONT)

    load = await with_fault(cluster, fault)
    await cluster.check_invariants(load.acknowledged)


# -- workers -------------------------------------------------------------------------
async def test_worker_kill_9(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()

    async def fault(load: Load) -> None:
        victim = cluster.workers[0]
        await victim.kill()
        cluster.workers.remove(victim)
        await cluster.add_worker()

    load = await with_fault(cluster, fault)
    await cluster.check_invariants(load.acknowledged)


async def test_worker_sigstop(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()

    async def fault(load: Load) -> None:
        victim = cluster.workers[0]
        victim.signal(signal.SIGSTOP)
        try:
            # The other worker goes on; the stopped one's events come back after ack_wait.
            before = len(cluster.handled())
            await cluster.eventually(
                lambda: len(cluster.handled()) >= before + 20, "the other worker handling"
            )
        finally:
            victim.signal(signal.SIGCONT)

    load = await with_fault(cluster, fault)
    await cluster.check_invariants(load.acknowledged)


# -- storage -------------------------------------------------------------------------
async def publish_until_refused(cluster: Cluster, limit: int, padding: int = 0) -> Load:
    """Publish events 10 at a time until one is refused (at most `limit`); no retries."""
    load = Load(cluster.stub, limit)
    for first in range(0, limit, 10):
        ids = load.ids[first : first + 10]
        entries = [
            request(
                f"k-{i}",
                event_id=i,
                message=orders_pb2.OrderPlaced(order_id=i, customer_id="c" * padding),
            )
            for i in ids
        ]
        reply = await cluster.stub.PublishBatch(
            gateway_pb2.PublishBatchRequest(entries=entries), timeout=10
        )
        for event_id, result in zip(ids, reply.results, strict=True):
            if result.HasField("ok"):
                load.acknowledged[event_id] = result.ok.sequence
            else:
                load.refusals[CODES[result.error.code].name] += 1
                load.last_refusal = f"{CODES[result.error.code].name}: {result.error.message}"
        if load.refusals:
            return load
    raise AssertionError(f"{limit} events stored, none refused")


async def test_stream_limit_reached(make_cluster: ClusterFactory) -> None:
    limit = ["--stream-set", "ORDERS.max_msgs=95", "--stream-set", "ORDERS.discard=new"]
    cluster = await make_cluster(gateway_args=limit)
    load = await publish_until_refused(cluster, 200)
    assert set(load.refusals) == {"RESOURCE_EXHAUSTED"}, load.last_refusal
    assert len(load.acknowledged) == 95
    await cluster.check_invariants(load.acknowledged)


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[NatsServer]:
    # JetStream may store only 1 MiB on disk (`max_file_store`).
    server = NatsServer(tmp_path / "small-nats", config="jetstream { max_file_store: 1048576 }\n")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_jetstream_storage_full(small_server: NatsServer, tmp_path: Path) -> None:
    """The server's JetStream storage is full (10023): RESOURCE_EXHAUSTED, not a
    retry-forever UNAVAILABLE (issue 18 defect 7)."""
    cluster = Cluster(small_server, tmp_path)
    try:
        await cluster.start()
        # 200 KB in a stream of its own: purged later to make room, so that the gateway can
        # be healthy again with every event of the test still there to check.
        await cluster.js.add_stream(StreamConfig(name="FILLER", subjects=["filler.>"]))
        for _ in range(25):
            await cluster.js.publish("filler.x", b"f" * 8000)
        load = await publish_until_refused(cluster, 1000, padding=8000)
        assert set(load.refusals) == {"RESOURCE_EXHAUSTED"}, load.last_refusal

        async def not_serving() -> None:
            assert await cluster.health() != SERVING, "SERVING while nothing can be stored"

        await cluster.eventually(not_serving, "gateway NOT_SERVING while the store is full")
        await cluster.js.purge_stream("FILLER")
        await cluster.check_invariants(load.acknowledged)
    finally:
        await cluster.close()


# -- dead letters ----------------------------------------------------------------------
async def test_dlq_stream_missing(make_cluster: ClusterFactory) -> None:
    """Stream DLQ unavailable under running workers whose handler rejects (deleted, and its
    name taken by a stream without the `dlq.>` subjects, so that no worker can simply
    create it again): no event may use up its deliveries on failed dead-letter stores;
    once DLQ is back, each is dead-lettered (issue 18 defect 3)."""
    cluster = await make_cluster(reject=True)
    await cluster.js.delete_stream(wire.DEAD_LETTER_STREAM)
    await cluster.js.add_stream(
        StreamConfig(name=wire.DEAD_LETTER_STREAM, subjects=["parked.dlq.>"])
    )
    load = Load(cluster.stub, 20)
    await asyncio.wait_for(load.run(), 60)

    def all_attempted() -> None:
        started = {event_id for _, event_id, _ in cluster.lines(cluster.started_file)}
        assert started >= set(load.ids), f"{len(set(load.ids) - started)} events not tried yet"

    async def given_up() -> None:
        info = await cluster.js.consumer_info(STREAM, GROUP)
        assert (info.num_ack_pending, info.num_pending) == (0, 0), "the group still has them"

    await cluster.eventually(all_attempted, "every event handled once (and rejected)")
    # The outage lasts until the group has given the events up (what a worker that uses up
    # deliveries on failed dead-letter stores comes to), at most 10 s (a worker that keeps
    # them never comes to it).
    with contextlib.suppress(AssertionError):
        await cluster.eventually(given_up, "the group giving the events up", within=10.0)
    # The operator restores DLQ.
    await cluster.js.delete_stream(wire.DEAD_LETTER_STREAM)
    await deadletter.ensure_stream(cluster.js)
    await cluster.check_invariants(load.acknowledged)


# -- connections the server closes -----------------------------------------------------
async def test_gateway_connection_closed_by_the_server(make_cluster: ClusterFactory) -> None:
    """An atomic batch whose event fits only without the batch headers: the server closes
    the gateway's connection; the gateway must replace it (issue 18 defect 1)."""
    cluster = await make_cluster()
    assert cluster.nc is not None
    assert cluster.nc.max_payload == MAX_PAYLOAD
    big = request("big")
    pad_to(big.event, MAX_PAYLOAD - 40)
    with contextlib.suppress(grpc.aio.AioRpcError):
        await cluster.stub.PublishBatch(
            gateway_pb2.PublishBatchRequest(entries=[big], atomic=True), timeout=10
        )
    await cluster.gateway_serving()
    load = Load(cluster.stub, 100)
    await asyncio.wait_for(load.run(), 60)
    await cluster.check_invariants(load.acknowledged)


async def test_worker_connection_closed_by_the_server(make_cluster: ClusterFactory) -> None:
    """An event 16 bytes under max_payload, rejected: its dead letter (more headers) must
    still be stored, and the workers go on (issue 18 defect 2)."""
    cluster = await make_cluster(reject=True)
    envelope = wire.Envelope(
        id="big-1",
        type=orders_pb2.OrderPlaced.DESCRIPTOR.full_name,
        source="tests",
        key="big",
        time=datetime.now(UTC),
    )
    headers = wire.encode_headers(envelope)
    room = MAX_PAYLOAD - 16 - wire.encoded_headers_size(headers)
    payload = orders_pb2.OrderPlaced(order_id="big", customer_id="c" * (room - 20))
    data = payload.SerializeToString()
    data = orders_pb2.OrderPlaced(
        order_id="big", customer_id="c" * (room - 20 - (len(data) - room))
    ).SerializeToString()
    subject = wire.subject("orders", envelope.type, envelope.key)
    await cluster.js.publish(subject, data, headers=dict(headers))
    load = Load(cluster.stub, 50)
    await asyncio.wait_for(load.run(), 60)
    await cluster.check_invariants([*load.acknowledged, "big-1"])
