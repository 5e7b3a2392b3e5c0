"""The consumer group of the fault tests (`consume tests.faults.groups:faulty`).

Its handler appends `<pid> <event id> <attempt>` to the file named by `JETGATE_FAULT_STARTED`
when it starts and to `JETGATE_FAULT_HANDLED` when it has handled the event (just before
the ack), in single `O_APPEND` writes. With `JETGATE_FAULT_REJECT=1` it rejects every event
instead (dead letter at once).
"""

from __future__ import annotations

import os

from consumers import ConsumerGroup, Delivery, Reject
from jetgate.examples.orders.v1 import orders_pb2

STARTED_ENV = "JETGATE_FAULT_STARTED"
HANDLED_ENV = "JETGATE_FAULT_HANDLED"
REJECT_ENV = "JETGATE_FAULT_REJECT"

faulty = ConsumerGroup(
    "faulty",
    stream="ORDERS",
    filter_subjects=["orders.OrderPlaced.>"],
    ack_wait=2.0,
    backoff=(0.1,),
    max_deliver=2,
    concurrency=8,
    description="tests/faults: records every OrderPlaced it handles",
)


def append_line(variable: str, delivery: Delivery) -> None:
    path = os.environ.get(variable)
    if not path:
        return
    line = f"{os.getpid()} {delivery.event_id} {delivery.attempt}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@faulty.handler(orders_pb2.OrderPlaced)
async def record(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
    append_line(STARTED_ENV, delivery)
    if os.environ.get(REJECT_ENV) == "1":
        raise Reject("tests/faults: rejecting every event")
    append_line(HANDLED_ENV, delivery)
