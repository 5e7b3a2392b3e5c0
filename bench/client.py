"""`jetgate.client` rows: coroutines each awaiting `publish()` one event at a time.

`publish-client` (64 coroutines, like `publish-unary`) shows what client-side batching
buys over one Publish call per event; `publish-client-1` and `publish-unary-1` (one caller,
one event at a time) show what it costs a lone event: their latency columns are the p50/p99
of one `publish()` next to one Publish call at low load.
"""

from __future__ import annotations

import asyncio
import time

from bench.measure import MAX_ERRORS, Context, Runner, Tally
from jetgate.client import Client, PublishError
from jetgate.examples.orders.v1 import orders_pb2

LATENCY = "per publish()"


def run_client(concurrency: int) -> Runner:
    """`concurrency` coroutines, each awaiting `Client.publish` in a loop (one client)."""

    async def run(ctx: Context, tally: Tally, stop: asyncio.Event) -> None:
        message = orders_pb2.OrderPlaced.FromString(ctx.events.payload)
        client = Client(channel=ctx.gateway_channel)

        async def worker() -> None:
            while not stop.is_set() and tally.failed < MAX_ERRORS:
                key = ctx.events.key("client")
                started = time.perf_counter()
                try:
                    stored = await client.publish(message, key=key)
                except PublishError as exc:
                    tally.error(str(exc))
                    continue
                tally.ok += 1
                tally.duplicates += stored.duplicate
                tally.latency(started)

        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            await client.close()

    return run
