"""What handler authors get: a group's own handler registry, a Delivery that cannot settle."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from consumers import ConsumerGroup, Delivery, Worker
from jetgate.examples.orders.v1 import orders_pb2
from tests.consumers.conftest import group, run_until, store

PLACED = orders_pb2.OrderPlaced.DESCRIPTOR.full_name
PAID = orders_pb2.OrderPaid.DESCRIPTOR.full_name


def test_a_replaced_copy_has_a_registry_of_its_own() -> None:
    original = ConsumerGroup("billing", stream="ORDERS")

    @original.handler(orders_pb2.OrderPlaced)
    async def placed(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None: ...

    copy = dataclasses.replace(original, ack_wait=2)

    @copy.handler(orders_pb2.OrderPaid)
    async def paid(event: orders_pb2.OrderPaid, delivery: Delivery) -> None: ...

    assert set(copy.handlers) == {PLACED, PAID}
    assert set(original.handlers) == {PLACED}
    assert "OrderPaid" not in original.consumer_config().metadata["jetgate.event_types"]

    @original.handler(orders_pb2.OrderCancelled)
    async def cancelled(event: orders_pb2.OrderCancelled, delivery: Delivery) -> None: ...

    assert orders_pb2.OrderCancelled.DESCRIPTOR.full_name not in copy.handlers


def test_the_handlers_view_is_read_only() -> None:
    billing = ConsumerGroup("billing", stream="ORDERS")
    view: Any = billing.handlers
    with pytest.raises(TypeError):
        view[PLACED] = (orders_pb2.OrderPlaced, None)
    with pytest.raises(TypeError):
        del view[PLACED]
    assert dict(billing.handlers) == {}


def test_a_mapping_given_at_construction_is_copied() -> None:
    given: dict[str, Any] = {}
    billing = ConsumerGroup("billing", stream="ORDERS", handlers=given)

    @billing.handler(orders_pb2.OrderPlaced)
    async def placed(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None: ...

    assert given == {}


def _reachable_msgs(value: object) -> list[str]:
    """Public attributes of `value` that are (or are bound to) a NATS message."""
    found = []
    for name in dir(value):
        if name.startswith("_"):
            continue
        attribute = inspect.getattr_static(value, name, None)
        attribute = getattr(value, name, attribute)
        if isinstance(attribute, Msg) or isinstance(getattr(attribute, "__self__", None), Msg):
            found.append(name)
    return found


async def test_a_delivery_offers_no_way_to_settle_its_event(
    nc: Client, js: JetStreamContext
) -> None:
    await store(js, "o-1")
    billing = group()
    seen: list[Delivery] = []

    @billing.handler(orders_pb2.OrderPlaced)
    async def keep(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        await delivery.in_progress()  # what a handler may do
        seen.append(delivery)

    stats = await run_until(Worker(billing, nc), lambda: len(seen) == 1)

    delivery = seen[0]
    for name in ("message", "msg", "ack", "ack_sync", "nak", "term", "reply"):
        assert not hasattr(delivery, name), name
    assert _reachable_msgs(delivery) == []
    for field in dataclasses.fields(delivery):
        value = getattr(delivery, field.name)
        assert not isinstance(value, Msg), field.name
        assert not isinstance(getattr(value, "__self__", None), Msg), field.name
    assert (delivery.event_id, delivery.key, delivery.attempt) != ("", "", 0)
    assert delivery.follow_up_id("x")
    assert stats.processed == 1


def test_every_package_ships_py_typed() -> None:
    repo = Path(__file__).resolve().parents[2]
    for package in ("jetgate", "observability", "consumers", "gateway"):
        assert (repo / package / "py.typed").is_file(), package
