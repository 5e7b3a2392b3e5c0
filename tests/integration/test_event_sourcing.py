"""The event-sourcing loop through the generated stubs: load an aggregate with Read, fold
it, append with expected_last_key_sequence, and on a conflict re-read and retry.

The aggregate is an order; each intended change is one payment (OrderPaid with its own
payment id). The rule the fold enforces: nothing is appended to a cancelled order.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import any_pb2

from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import event_pb2, gateway_pb2
from tests.integration.conftest import detail, order_placed, rich_status

if TYPE_CHECKING:
    from jetgate.v1.gateway_pb2_grpc import EventGatewayAsyncStub as Stub

ORDER = "o-es-1"
PLACED = "jetgate.examples.orders.v1.OrderPlaced"
TYPES: dict[str, type[orders_pb2.OrderPlaced | orders_pb2.OrderPaid | orders_pb2.OrderCancelled]]
TYPES = {
    t.DESCRIPTOR.full_name: t
    for t in (orders_pb2.OrderPlaced, orders_pb2.OrderPaid, orders_pb2.OrderCancelled)
}


@dataclass
class Order:
    """The folded state of one order, and the version it was folded at."""

    version: int = 0  # sequence of the last event applied (0: nothing stored)
    placed: bool = False
    cancelled: bool = False
    payments: list[str] = field(default_factory=list)

    def apply(self, stored: gateway_pb2.StoredEvent) -> None:
        assert stored.event.sequence > self.version, "events out of stream order"
        name = stored.event.payload.type_url.rsplit("/", 1)[-1]
        message = TYPES[name].FromString(stored.event.payload.value)
        if isinstance(message, orders_pb2.OrderPlaced):
            assert not self.placed, "placed twice"
            self.placed = True
        elif isinstance(message, orders_pb2.OrderPaid):
            assert self.placed, "paid before placed"
            self.payments.append(message.payment_id)
        else:
            self.cancelled = True
        self.version = stored.event.sequence


async def load(stub: Stub, order_id: str) -> Order:
    """The order as stored now: Read by key, folded."""
    order = Order()
    read = gateway_pb2.ReadRequest(key=gateway_pb2.KeySelector(event_type=PLACED, key=order_id))
    async for response in stub.Read(read, timeout=30):
        if response.HasField("event"):
            order.apply(response.event)
        else:
            assert response.caught_up.last_sequence == order.version
    return order


async def append(stub: Stub, order_id: str, message: object, version: int) -> int:
    """Append one event if the order is still at `version`; its sequence."""
    payload = any_pb2.Any()
    payload.Pack(message)  # type: ignore[arg-type]
    response = await stub.Publish(
        gateway_pb2.PublishRequest(
            event=event_pb2.Event(key=order_id, payload=payload),
            precondition=event_pb2.Precondition(expected_last_key_sequence=version),
        ),
        timeout=30,
    )
    return int(response.sequence)


async def pay(stub: Stub, order_id: str, payment_id: str) -> int:
    """The command: record a payment unless the order is cancelled; conflicts retried.
    Returns the number of conflicts it met."""
    conflicts = 0
    while True:
        order = await load(stub, order_id)
        if order.cancelled or payment_id in order.payments:
            return conflicts
        try:
            await append(
                stub,
                order_id,
                orders_pb2.OrderPaid(order_id=order_id, payment_id=payment_id),
                order.version,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            conflicts += 1
            continue
        return conflicts


async def test_a_concurrent_append_fails_and_the_retry_loses_nothing(stub: Stub) -> None:
    placed = await append(stub, ORDER, order_placed(ORDER), 0)
    seen_by_a = await load(stub, ORDER)
    assert (seen_by_a.version, seen_by_a.placed) == (placed, True)

    # Writer B appends after A read: A's append at the version it read must fail.
    b_seq = await append(
        stub, ORDER, orders_pb2.OrderPaid(order_id=ORDER, payment_id="p-b"), seen_by_a.version
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await append(
            stub, ORDER, orders_pb2.OrderPaid(order_id=ORDER, payment_id="p-a"), seen_by_a.version
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    conflict = detail(rich_status(refused.value), event_pb2.SequenceConflict)
    assert conflict.condition == "expected_last_key_sequence"
    assert (conflict.expected_sequence, conflict.actual_sequence) == (placed, b_seq)
    assert conflict.subject == f"orders.*.{ORDER}"

    # A re-reads (sees B's payment at the conflict's sequence), folds and retries.
    reloaded = await load(stub, ORDER)
    assert (reloaded.version, reloaded.payments) == (conflict.actual_sequence, ["p-b"])
    a_seq = await append(
        stub, ORDER, orders_pb2.OrderPaid(order_id=ORDER, payment_id="p-a"), reloaded.version
    )

    final = await load(stub, ORDER)
    assert final.payments == ["p-b", "p-a"]
    assert final.version == a_seq


async def test_concurrent_writers_lose_no_update(stub: Stub) -> None:
    order_id = "o-es-2"
    await append(stub, order_id, order_placed(order_id), 0)
    intended = [f"p-{writer}-{n}" for writer in "xyz" for n in range(4)]

    async def writer(name: str) -> int:
        conflicts = 0
        for payment in (p for p in intended if p.startswith(f"p-{name}-")):
            conflicts += await pay(stub, order_id, payment)
        return conflicts

    await asyncio.gather(*(writer(name) for name in "xyz"))

    final = await load(stub, order_id)
    assert sorted(final.payments) == sorted(intended), "a payment lost or recorded twice"
    for name in "xyz":  # each writer's own changes in the order it made them
        mine = [p for p in final.payments if p.startswith(f"p-{name}-")]
        assert mine == [p for p in intended if p.startswith(f"p-{name}-")]

    # The folded state decides: a cancelled order takes no payment.
    await append(stub, order_id, orders_pb2.OrderCancelled(order_id=order_id), final.version)
    await pay(stub, order_id, "p-late")
    assert "p-late" not in (await load(stub, order_id)).payments
