"""`pipeline` rows: orders through a billing and a shipping group, as in the demo.

Each group's handler publishes one follow-up per event (OrderPlaced -> OrderPaid ->
OrderShipped, same key, id from `Delivery.follow_up_id`) through the gateway:
`pipeline-unary` with one Publish call per follow-up, `pipeline` through one
`jetgate.client.Client` shared by both groups (as a demo worker shares one). The orders
are stored first (PublishBatch); the clock runs from starting the two workers (in this
process, concurrency 64 each) to the last OrderShipped's handler; orders/s is the row's
events/s. The stream must then hold exactly three events per order.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from google.protobuf import any_pb2
from google.protobuf.message import Message

from bench.events import STREAM, SUBJECT_PREFIX
from bench.measure import RPC_TIMEOUT, Context, Measurer, Row, Window, proc_cpu
from consumers import ConsumerGroup, Delivery, Worker
from jetgate.client import Client
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import event_pb2, gateway_pb2

ORDERS_PER_SECOND_OF_WINDOW = 400  # 5 s window: 2,000 orders
CONCURRENCY = 64
STORE_BATCH = 500
LIMIT = 300.0  # s


def measure(via_client: bool) -> Measurer:
    """The pipeline with follow-ups through jetgate.client, or through unary Publish."""

    async def run(ctx: Context, window: Window) -> Row:
        count = max(100, int(window.seconds * ORDERS_PER_SECOND_OF_WINDOW))
        js = ctx.nc.jetstream()
        await js.purge_stream(STREAM)
        run_id = uuid.uuid4().hex[:8]
        keys = [f"pl-{run_id}-{i}" for i in range(count)]
        for start in range(0, count, STORE_BATCH):
            entries = [
                _request(orders_pb2.OrderPlaced(order_id=k), k) for k in keys[start:][:STORE_BATCH]
            ]
            await ctx.gateway.PublishBatch(
                gateway_pb2.PublishBatchRequest(entries=entries), timeout=RPC_TIMEOUT
            )
        client = Client(channel=ctx.gateway_channel) if via_client else None

        async def follow_up(message: Message, cause: Delivery) -> None:
            event_id = cause.follow_up_id(message.DESCRIPTOR.name)
            if client is not None:
                await client.publish(message, key=cause.key, id=event_id)
            else:
                request = _request(message, cause.key, event_id)
                await ctx.gateway.Publish(request, timeout=RPC_TIMEOUT)

        shipped = 0
        done = asyncio.Event()
        billing = ConsumerGroup(
            f"bench-billing-{run_id}",
            stream=STREAM,
            filter_subjects=[f"{SUBJECT_PREFIX}.OrderPlaced.>"],
            concurrency=CONCURRENCY,
        )
        shipping = ConsumerGroup(
            f"bench-shipping-{run_id}",
            stream=STREAM,
            filter_subjects=[f"{SUBJECT_PREFIX}.OrderPaid.>"],
            concurrency=CONCURRENCY,
        )

        @billing.handler(orders_pb2.OrderPlaced)
        async def charge(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
            await follow_up(orders_pb2.OrderPaid(order_id=event.order_id), delivery)

        @shipping.handler(orders_pb2.OrderPaid)
        async def ship(event: orders_pb2.OrderPaid, delivery: Delivery) -> None:
            nonlocal shipped
            await follow_up(orders_pb2.OrderShipped(order_id=event.order_id), delivery)
            shipped += 1
            if shipped >= count:
                done.set()

        stop = asyncio.Event()
        cpu, server_cpu, nats_cpu = (
            time.process_time(),
            proc_cpu(ctx.gateway_pid),
            proc_cpu(ctx.nats_pid),
        )
        started = time.perf_counter()
        workers = [asyncio.create_task(Worker(g, ctx.nc).run(stop)) for g in (billing, shipping)]
        try:
            await asyncio.wait_for(done.wait(), LIMIT)
            elapsed = time.perf_counter() - started
        finally:
            stop.set()
            await asyncio.gather(*workers)
            if client is not None:
                await client.close()
        cpu = time.process_time() - cpu
        server_cpu = proc_cpu(ctx.gateway_pid) - server_cpu
        nats_cpu = proc_cpu(ctx.nats_pid) - nats_cpu
        for group in (billing, shipping):
            await js.delete_consumer(STREAM, group.name)
        info = await js.stream_info(STREAM)
        return Row(
            seconds=elapsed,
            events=count,
            events_per_s=count / elapsed,
            client_cpu_us_per_event=1e6 * cpu / count,
            server_cpu_us_per_event=1e6 * server_cpu / count,
            nats_cpu_us_per_event=1e6 * nats_cpu / count,
            client_cpu_cores=cpu / elapsed,
            server_cpu_cores=server_cpu / elapsed,
            nats_cpu_cores=nats_cpu / elapsed,
            ok_total=3 * count,
            stream=STREAM,
            stream_messages=int(info.state.messages),
            consistent=int(info.state.messages) == 3 * count,
            extra={"orders": count},
        )

    return run


def _request(message: Message, key: str, event_id: str = "") -> gateway_pb2.PublishRequest:
    payload = any_pb2.Any()
    payload.Pack(message)
    return gateway_pb2.PublishRequest(event=event_pb2.Event(id=event_id, key=key, payload=payload))
