"""The remote member of a group (consumers.remote) and the outcomes it relies on (`Retry`,
`HandBack`, `Worker.resize`), against a real nats-server, without any transport."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from nats.aio.client import Client
from nats.js import JetStreamContext

from consumers import ConsumerGroup, Delivery, HandBack, Retry, Worker
from consumers.remote import Action, Batch, RemoteMember, Status
from jetgate.examples.orders.v1 import orders_pb2
from tests.consumers.conftest import group, running, store
from tests.support.eventually import eventually

TYPES = {orders_pb2.OrderPlaced.DESCRIPTOR.full_name: orders_pb2.OrderPlaced}


@contextlib.asynccontextmanager
async def member(nc: Client, billing: ConsumerGroup, credits: int = 4) -> AsyncIterator[Taken]:
    remote = RemoteMember(billing, TYPES, nc, credits=credits, tick=0.05)
    task = asyncio.create_task(remote.run())
    try:
        yield Taken(remote)
    finally:
        remote.close()
        await asyncio.wait_for(task, 30)


class Taken:
    """What a member's client has taken so far."""

    def __init__(self, remote: RemoteMember) -> None:
        self.remote = remote
        self.batches: list[Batch] = []

    def take(self) -> Batch:
        batch = self.remote.take(100, 1 << 20)
        self.batches.append(batch)
        return batch

    def deliveries(self, count: int) -> list[str]:
        """The ack ids of the first `count` deliveries (AssertionError until there)."""
        self.take()
        ids = [d.ack_id for b in self.batches for d in b.deliveries]
        assert len(ids) >= count, ids
        return ids[:count]

    def results(self) -> list[tuple[str, Status]]:
        self.take()
        return [(r.ack_id, r.status) for b in self.batches for r in b.results]


async def test_an_ack_is_applied_once_the_worker_acked(nc: Client, js: JetStreamContext) -> None:
    async with member(nc, group()) as taken:
        await store(js, "o-1")
        [ack_id] = await eventually(lambda: taken.deliveries(1))
        delivery = taken.batches[-1].deliveries[0]
        assert (
            delivery.delivery.payload == orders_pb2.OrderPlaced(order_id="o-1").SerializeToString()
        )
        assert delivery.delivery.stored_time is not None
        await taken.remote.settle(ack_id, Action.ACK)
        await taken.remote.settle(ack_id, Action.ACK)
        await taken.remote.settle("99", Action.ACK)
        await eventually(lambda: len(taken.results()) == 3)
        assert taken.results() == [
            (ack_id, Status.APPLIED),
            (ack_id, Status.ALREADY_SETTLED),
            ("99", Status.UNKNOWN),
        ]
        assert taken.remote.stats.processed == 1


async def test_close_hands_unsettled_deliveries_back_without_failing_them(
    nc: Client, js: JetStreamContext
) -> None:
    billing = group(ack_wait=60.0)
    async with member(nc, billing) as taken:
        await store(js, "o-1")
        await eventually(lambda: taken.deliveries(1))
    stats = taken.remote.stats
    assert (stats.handed_back, stats.failed) == (1, 0)
    async with member(nc, billing) as again:  # at once: long before ack_wait
        await eventually(lambda: again.deliveries(1))
        assert again.batches[-1].deliveries[0].delivery.attempt == 2


async def test_an_unsettled_delivery_expires_and_fails_its_attempt(
    nc: Client, js: JetStreamContext
) -> None:
    async with member(nc, group(ack_wait=1.0)) as taken:
        await store(js, "o-1")
        first, second = await eventually(lambda: taken.deliveries(2))
        await taken.remote.settle(first, Action.ACK)
        await taken.remote.settle(second, Action.ACK)
        await eventually(lambda: len(taken.results()) == 2)
        assert taken.results()[0] == (first, Status.EXPIRED)
        assert taken.remote.stats.failed == 1


async def test_credits_are_the_worker_concurrency(nc: Client, js: JetStreamContext) -> None:
    async with member(nc, group(), credits=1) as taken:
        for key in ("o-1", "o-2", "o-3"):
            await store(js, key)
        await eventually(lambda: taken.deliveries(1))
        assert taken.remote.in_flight == 1
        taken.remote.add_credits(2)
        await eventually(lambda: taken.deliveries(3))
        assert taken.remote.in_flight == 3


async def test_retry_naks_with_its_delay_and_hand_back_is_no_failure(
    nc: Client, js: JetStreamContext
) -> None:
    billing = group(backoff=(60.0,))
    attempts: list[tuple[str, int]] = []

    @billing.handler(orders_pb2.OrderPlaced)
    async def handle(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        attempts.append((event.order_id, delivery.attempt))
        if delivery.attempt == 1:
            raise Retry(0.1) if event.order_id == "o-1" else HandBack

    worker = Worker(billing, nc)
    async with running(worker):
        await store(js, "o-1")
        await store(js, "o-2")
        # The backoff would be 60 s: the delay given wins.
        await eventually(lambda: len(attempts) == 4)
    assert sorted(attempts) == [("o-1", 1), ("o-1", 2), ("o-2", 1), ("o-2", 2)]
    assert (worker.stats.failed, worker.stats.handed_back, worker.stats.processed) == (1, 1, 2)


async def test_resize_raises_concurrency_while_running(nc: Client, js: JetStreamContext) -> None:
    billing = group()
    release = asyncio.Event()
    started: list[str] = []

    @billing.handler(orders_pb2.OrderPlaced)
    async def slow(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        started.append(event.order_id)
        await release.wait()

    worker = Worker(billing, nc, concurrency=1, prefetch=2)
    async with running(worker):
        for key in ("o-1", "o-2", "o-3"):
            await store(js, key)
        await eventually(lambda: len(started) == 1 and worker.stats.in_flight == 3)
        worker.resize(3)
        await eventually(lambda: len(started) == 3)
        release.set()
