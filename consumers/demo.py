"""The demo pipeline: `billing` pays each placed order, `shipping` ships each paid one.

    OrderPlaced --billing--> OrderPaid --shipping--> OrderShipped     (same key throughout)

Run by `jetgate up` (config `workers`), or by hand:
`jetgate consume consumers.demo:billing` and `jetgate consume consumers.demo:shipping`.

Follow-up events go through the gateway's gRPC API with `jetgate.client`, as any Python
service would publish them (`JETGATE_GATEWAY`, default 127.0.0.1:50051): one client per
worker process, so the follow-ups of concurrently handled events share PublishStream
batches instead of costing one Publish call each. Their event
id is derived from the event that caused them (`Delivery.follow_up_id`), so a redelivered
OrderPlaced (a worker killed after publishing OrderPaid but before its ack) publishes the
same OrderPaid id again, which the stream de-duplicates inside its duplicate window
(2 minutes in jetgate.toml): one OrderPaid per OrderPlaced. A failed publish raises, so
the event is retried with the group's backoff (after the client's own retries of
UNAVAILABLE and DEADLINE_EXCEEDED with the same id).

Tracing: the client sends the handler's current context (its process span) with each
event, and the gateway makes the follow-up's producer span a child of it, so OrderPaid and
OrderShipped continue the OrderPlaced's trace although events of many orders share a batch.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from consumers import ConsumerGroup, Delivery
from jetgate import processes
from jetgate.client import Client, RetrySettings
from jetgate.examples.orders.v1 import orders_pb2

PUBLISH_TIMEOUT = 10.0  # s: the client's retries of one follow-up stop after it

billing = ConsumerGroup(
    "billing",
    stream="ORDERS",
    filter_subjects=["orders.OrderPlaced.>"],
    description="demo: pays every placed order (OrderPlaced -> OrderPaid)",
)
shipping = ConsumerGroup(
    "shipping",
    stream="ORDERS",
    filter_subjects=["orders.OrderPaid.>"],
    description="demo: ships every paid order (OrderPaid -> OrderShipped)",
)

# One client per event loop and gateway address, made on first use inside the worker's loop
# (a client's channel and tasks belong to the loop that made them).
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Client]] = (
    weakref.WeakKeyDictionary()
)


def _client() -> Client:
    address = os.environ.get(processes.GATEWAY_ADDRESS, "127.0.0.1:50051")
    clients = _clients.setdefault(asyncio.get_running_loop(), {})
    if address not in clients:
        retry = RetrySettings(deadline=PUBLISH_TIMEOUT, attempt_timeout=PUBLISH_TIMEOUT)
        clients[address] = Client(address, retry=retry)
    return clients[address]


async def publish_follow_up(message: Message, cause: Delivery, source: str) -> None:
    """Publish `message` for the key of `cause`, with an id derived from it."""
    await _client().publish(
        message,
        key=cause.key,
        id=cause.follow_up_id(message.DESCRIPTOR.name),
        source=source,
    )


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC))
    return stamp


@billing.handler(orders_pb2.OrderPlaced)
async def charge(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
    """Charge the order's total (here: pretend to) and announce the payment."""
    paid = orders_pb2.OrderPaid(
        order_id=event.order_id,
        payment_id="pay-" + delivery.follow_up_id("payment")[:8],
        amount=event.total,
        method="card",
        paid_at=_now(),
    )
    await publish_follow_up(paid, delivery, "jetgate-demo/billing")


@shipping.handler(orders_pb2.OrderPaid)
async def ship(event: orders_pb2.OrderPaid, delivery: Delivery) -> None:
    """Hand the paid order to a carrier (here: pretend to) and announce the shipment."""
    shipped = orders_pb2.OrderShipped(
        order_id=event.order_id,
        shipment_id="shp-" + delivery.follow_up_id("shipment")[:8],
        carrier="demo-post",
        tracking_number=delivery.follow_up_id("tracking")[:12].upper(),
        shipped_at=_now(),
    )
    await publish_follow_up(shipped, delivery, "jetgate-demo/shipping")
