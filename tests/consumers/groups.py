"""Consumer groups for the worker-process tests (`consume tests.consumers.groups:<name>`).

The handlers tell the test what they did by appending one line per event to files named
by environment variables (single `O_APPEND` writes, so lines of concurrent workers never
mix):
- `JETGATE_TEST_STARTED`: `<worker pid> <event id> <attempt>` when a handler starts,
- `JETGATE_TEST_RECORD`: the same line once it has finished (just before the ack).

Behaviour knobs, read per event so each worker process can get its own:
- `JETGATE_TEST_SLEEP`: seconds each handler sleeps before finishing (default 0).
"""

from __future__ import annotations

import asyncio
import os

from consumers import ConsumerGroup, Delivery
from jetgate.examples.orders.v1 import orders_pb2

RECORD_ENV = "JETGATE_TEST_RECORD"
STARTED_ENV = "JETGATE_TEST_STARTED"
SLEEP_ENV = "JETGATE_TEST_SLEEP"

recorder = ConsumerGroup(
    "recorder",
    stream="ORDERS",
    filter_subjects=["orders.OrderPlaced.>"],
    ack_wait=10.0,
    backoff=(0.2,),
    concurrency=16,
    # Longer than any handler of these tests sleeps: a "stuck" worker stays stuck until killed.
    handler_timeout=600.0,
    description="tests: records every OrderPlaced it handles",
)


def append_line(variable: str, delivery: Delivery) -> None:
    """Append `<pid> <event id> <attempt>` to the file named by env `variable`, if set."""
    path = os.environ.get(variable)
    if not path:
        return
    line = f"{os.getpid()} {delivery.event_id} {delivery.attempt}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@recorder.handler(orders_pb2.OrderPlaced)
async def record(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
    append_line(STARTED_ENV, delivery)
    pause = float(os.environ.get(SLEEP_ENV) or 0)
    if pause > 0:
        await asyncio.sleep(pause)
    append_line(RECORD_ENV, delivery)
