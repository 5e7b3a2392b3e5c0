"""The consumer group of the soak (`bench.soak`): `python -m consumers consume
bench.soak_group:soak` drains the soak's OrderPlaced events with a handler that only
checks what it got (the worker's own machinery is what the soak watches)."""

from __future__ import annotations

from consumers import ConsumerGroup, Delivery
from jetgate.examples.orders.v1 import orders_pb2

GROUP = "soak"

soak = ConsumerGroup(GROUP, stream="ORDERS")


@soak.handler(orders_pb2.OrderPlaced)
async def placed(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
    """Handled: the typed event arrived whole (a broken one fails here and is retried)."""
    if not event.order_id:
        raise ValueError("OrderPlaced without an order id")
