"""Consuming: a consumer-group worker against a plain nats-py loop, and end-to-end latency.

- `consume-plain` (baseline): a durable pull consumer drained by the loop most nats-py
  code has: `fetch(100)`, then `ack()` each message.
- `consume`: one `consumers.Worker` (concurrency 16, default prefetch, a no-op handler that
  still gets its typed event and Delivery) draining the same events with its own consumer.
  Both drain `CONSUME_EVENTS` events (100k for a 5 s window, fewer for shorter windows)
  stored beforehand in stream CONSUME, shaped exactly like the gateway's; the clock runs
  from the first pull to the last ack. CPU is this process's and nats-server's.
- `e2e-latency`: `Publish` calls through the gateway at a fixed offered rate (1,000/s),
  consumed by a worker in this process; the latency is from the call's start to the start
  of the handler (both clocks in this process), p50/p99/p999.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import grpc
from nats.js.api import AckPolicy, ConsumerConfig, PubAck, StreamConfig
from nats.js.errors import NotFoundError

from bench.events import EVENT_TYPE, STREAM, SUBJECT_PREFIX
from bench.measure import MAX_ERRORS, RPC_TIMEOUT, Context, Row, Tally, Window, proc_cpu
from consumers import ConsumerGroup, Delivery, Worker
from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2

CONSUME_STREAM = "CONSUME"
CONSUME_EVENTS_PER_SECOND_OF_WINDOW = 20_000  # 5 s window: 100k events
MAX_CONSUME_EVENTS = 100_000
STORE_WINDOW = 2000
FETCH_BATCH = 100
WORKER_CONCURRENCY = 16
E2E_RATE = 1000.0  # events/s offered
E2E_IN_FLIGHT = 256
SENT_HEADER = "bench-sent-ns"
DRAIN_LIMIT = 120.0  # s


async def _store(ctx: Context, count: int) -> None:
    """A fresh stream CONSUME holding `count` gateway-shaped events."""
    js = ctx.nc.jetstream()
    with contextlib.suppress(NotFoundError):
        await js.delete_stream(CONSUME_STREAM)
    await js.add_stream(StreamConfig(name=CONSUME_STREAM, subjects=["consume.>"]))
    pending: list[asyncio.Future[PubAck]] = []
    for _ in range(count):
        subject, headers = ctx.events.raw("c")
        pending.append(
            await js.publish_async("consume." + subject, ctx.events.payload, headers=headers)
        )
        if len(pending) >= STORE_WINDOW:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)


async def _drain_timed(
    ctx: Context, window: Window, drain: Callable[[int], Awaitable[None]]
) -> Row:
    count = min(MAX_CONSUME_EVENTS, int(window.seconds * CONSUME_EVENTS_PER_SECOND_OF_WINDOW))
    await _store(ctx, count)
    cpu, nats_cpu, started = time.process_time(), proc_cpu(ctx.nats_pid), time.perf_counter()
    await asyncio.wait_for(drain(count), DRAIN_LIMIT)
    elapsed = time.perf_counter() - started
    cpu, nats_cpu = time.process_time() - cpu, proc_cpu(ctx.nats_pid) - nats_cpu
    info = await ctx.nc.jetstream().stream_info(CONSUME_STREAM)
    return Row(
        seconds=elapsed,
        events=count,
        events_per_s=count / elapsed,
        client_cpu_us_per_event=1e6 * cpu / count,
        nats_cpu_us_per_event=1e6 * nats_cpu / count,
        client_cpu_cores=cpu / elapsed,
        nats_cpu_cores=nats_cpu / elapsed,
        ok_total=count,
        stream=CONSUME_STREAM,
        stream_messages=int(info.state.messages),
        consistent=int(info.state.messages) == count,
    )


async def measure_plain(ctx: Context, window: Window) -> Row:
    """`consume-plain`: fetch(100) and ack each, until every stored event is acknowledged."""

    async def drain(count: int) -> None:
        js = ctx.nc.jetstream()
        config = ConsumerConfig(durable_name="plain", ack_policy=AckPolicy.EXPLICIT)
        await js.add_consumer(CONSUME_STREAM, config)
        sub = await js.pull_subscribe_bind("plain", stream=CONSUME_STREAM)
        done = 0
        while done < count:
            for msg in await sub.fetch(FETCH_BATCH, timeout=5):
                await msg.ack()
                done += 1
        await ctx.nc.flush()
        await sub.unsubscribe()

    return await _drain_timed(ctx, window, drain)


async def measure_worker(ctx: Context, window: Window) -> Row:
    """`consume`: one Worker, concurrency 16, no-op handler."""

    async def drain(count: int) -> None:
        group = ConsumerGroup(
            "bench", stream=CONSUME_STREAM, concurrency=WORKER_CONCURRENCY, ack_wait=30
        )
        handled = asyncio.Event()
        seen = 0

        @group.handler(orders_pb2.OrderPlaced)
        async def noop(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
            nonlocal seen
            seen += 1
            if seen == count:
                handled.set()

        worker = Worker(group, ctx.nc)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        await handled.wait()
        stop.set()
        await task
        if worker.stats.processed != count:
            raise RuntimeError(f"worker acknowledged {worker.stats.processed} of {count}")

    return await _drain_timed(ctx, window, drain)


async def run_e2e(ctx: Context, tally: Tally, stop: asyncio.Event) -> None:
    """`e2e-latency`: Publish at E2E_RATE/s; latency = call start -> handler start."""
    group = ConsumerGroup(
        "e2e", stream=STREAM, filter_subjects=[f"{SUBJECT_PREFIX}.{wire.type_name(EVENT_TYPE)}.>"]
    )

    @group.handler(orders_pb2.OrderPlaced)
    async def record(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        sent = int(delivery.headers.get(SENT_HEADER, "0"))
        if sent:
            tally.latency(sent / 1e9)

    worker_stop = asyncio.Event()
    worker = asyncio.create_task(Worker(group, ctx.nc).run(worker_stop))
    slots = asyncio.Semaphore(E2E_IN_FLIGHT)
    calls: set[asyncio.Task[None]] = set()

    async def publish() -> None:
        request = ctx.events.request("e2e")
        started = time.perf_counter()
        request.event.headers[SENT_HEADER] = str(int(started * 1e9))
        try:
            await ctx.gateway.Publish(request, timeout=RPC_TIMEOUT)
            tally.ok += 1
            tally.rpcs += 1
        except grpc.aio.AioRpcError as exc:
            tally.error(f"{exc.code().name}: {exc.details()}")
        finally:
            slots.release()

    try:
        next_at = time.perf_counter()
        while not stop.is_set() and tally.failed < MAX_ERRORS:
            await slots.acquire()
            task = asyncio.create_task(publish())
            calls.add(task)
            task.add_done_callback(calls.discard)
            next_at += 1 / E2E_RATE
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        await asyncio.gather(*calls)
        for _ in range(int(DRAIN_LIMIT * 10)):  # until the worker has seen every event
            info = await ctx.nc.jetstream().consumer_info(STREAM, "e2e")
            if info.num_pending == 0 and info.num_ack_pending == 0:
                break
            await asyncio.sleep(0.1)
    finally:
        worker_stop.set()
        await worker
        with contextlib.suppress(NotFoundError):
            await ctx.nc.jetstream().delete_consumer(STREAM, "e2e")
