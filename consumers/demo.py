"""The demo pipeline: `billing` pays each placed order, `shipping` ships each paid one.

    OrderPlaced --billing--> OrderPaid --shipping--> OrderShipped     (same key throughout)

Run by `jetgate up` (config `workers`), or by hand:
`jetgate consume consumers.demo:billing` and `jetgate consume consumers.demo:shipping`.

Follow-up events go through the gateway's gRPC API with the generated client stubs, as
any service would publish them (`JETGATE_GATEWAY`, default 127.0.0.1:50051). Their event
id is derived from the event that caused them (`Delivery.follow_up_id`), so a redelivered
OrderPlaced (a worker killed after publishing OrderPaid but before its ack) publishes the
same OrderPaid id again, which the stream de-duplicates inside its duplicate window
(2 minutes in jetgate.toml): one OrderPaid per OrderPlaced. A failed publish raises, so
the event is retried with the group's backoff.

The channel carries OpenTelemetry's gRPC client instrumentation (global tracer provider,
which `jetgate consume` sets): each follow-up Publish is a client span inside the
handler's process span, so OrderPaid and OrderShipped continue the OrderPlaced's trace.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import grpc
from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from consumers import ConsumerGroup, Delivery
from jetgate import processes
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc

PUBLISH_TIMEOUT = 10.0  # s

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

_stubs: dict[str, gateway_pb2_grpc.EventGatewayAsyncStub] = {}


def _gateway() -> gateway_pb2_grpc.EventGatewayAsyncStub:
    """One channel per process, made on first use (inside the worker's event loop)."""
    address = os.environ.get(processes.GATEWAY_ADDRESS, "127.0.0.1:50051")
    if address not in _stubs:
        interceptors = aio_client_interceptors()  # type: ignore[no-untyped-call]
        channel = grpc.aio.insecure_channel(address, interceptors=interceptors)
        _stubs[address] = gateway_pb2_grpc.EventGatewayStub(channel)
    return _stubs[address]


async def publish_follow_up(message: Message, cause: Delivery, source: str) -> None:
    """Publish `message` for the key of `cause`, with an id derived from it."""
    payload = any_pb2.Any()
    payload.Pack(message)
    event = event_pb2.Event(
        id=cause.follow_up_id(message.DESCRIPTOR.name),
        source=source,
        key=cause.key,
        payload=payload,
    )
    await _gateway().Publish(gateway_pb2.PublishRequest(event=event), timeout=PUBLISH_TIMEOUT)


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
