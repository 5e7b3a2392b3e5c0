"""ConsumerGroup settings, handler registry and the consumer it asks JetStream for (pure)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from nats.js.api import AckPolicy

from consumers import ConsumerGroup, Delivery, GroupConfigError
from jetgate.examples.orders.v1 import orders_pb2


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"name": "bil.ling"}, "group name"),
        ({"name": ""}, "group name"),
        ({"name": "x" * 65}, "group name"),
        ({"stream": ""}, "stream is required"),
        ({"filter_subjects": ["orders..x"]}, "not a valid subject filter"),
        ({"filter_subjects": ["orders.>.x"]}, "not a valid subject filter"),
        ({"max_deliver": 0}, "max_deliver"),
        ({"backoff": (1, -1)}, "backoff"),
        ({"ack_wait": 0}, "ack_wait"),
        ({"concurrency": 0}, "concurrency"),
        ({"max_ack_pending": 0}, "max_ack_pending"),
    ],
)
def test_invalid_settings_are_refused(settings: dict[str, object], problem: str) -> None:
    values: dict[str, object] = {"name": "billing", "stream": "ORDERS", **settings}
    name = values.pop("name")
    with pytest.raises(GroupConfigError, match=problem):
        ConsumerGroup(name, **values)  # type: ignore[arg-type]


def test_retry_delay_follows_backoff_and_repeats_the_last_step() -> None:
    group = ConsumerGroup("billing", stream="ORDERS", backoff=[1, 5, 30])
    assert [group.retry_delay(attempt) for attempt in range(1, 6)] == [1, 5, 30, 30, 30]
    assert ConsumerGroup("b", stream="ORDERS", backoff=()).retry_delay(3) == 0


def test_consumer_config_keeps_ack_wait_and_adds_the_guard_delivery() -> None:
    group = ConsumerGroup(
        "billing",
        stream="ORDERS",
        filter_subjects=["orders.OrderPlaced.>"],
        max_deliver=5,
        backoff=(1, 5, 30),
        ack_wait=30,
        max_ack_pending=64,
    )

    @group.handler(orders_pb2.OrderPlaced)
    async def charge(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None: ...

    config = group.consumer_config()
    assert (config.durable_name, config.name) == ("billing", "billing")
    assert config.ack_policy == AckPolicy.EXPLICIT
    assert (config.ack_wait, config.max_deliver, config.max_ack_pending) == (30, 6, 64)
    assert config.backoff is None  # nats-server would replace ack_wait by backoff[0]
    assert config.filter_subjects == ["orders.OrderPlaced.>"]
    assert config.metadata == {
        "jetgate.max_deliver": "5",
        "jetgate.backoff": "1s,5s,30s",
        "jetgate.event_types": "jetgate.examples.orders.v1.OrderPlaced",
    }


def test_one_handler_per_type_and_replace_keeps_handlers() -> None:
    group = ConsumerGroup("billing", stream="ORDERS")

    @group.handler(orders_pb2.OrderPlaced)
    async def first(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None: ...

    with pytest.raises(GroupConfigError, match="already handles"):

        @group.handler(orders_pb2.OrderPlaced)
        async def second(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None: ...

    faster = dataclasses.replace(group, ack_wait=2)
    assert faster.ack_wait == 2
    assert faster.handlers["jetgate.examples.orders.v1.OrderPlaced"][1] is first
    assert group.filter_subjects == ()


def test_follow_up_ids_are_deterministic_per_cause_and_name() -> None:
    def delivery(event_id: str) -> Delivery:
        return Delivery(
            event_id=event_id,
            event_type="t",
            key="k",
            source="s",
            time=datetime.now(UTC),
            subject="orders.T.k",
            stream="ORDERS",
            sequence=1,
            attempt=1,
            group="billing",
        )

    assert delivery("e-1").follow_up_id("OrderPaid") == delivery("e-1").follow_up_id("OrderPaid")
    assert delivery("e-1").follow_up_id("OrderPaid") != delivery("e-2").follow_up_id("OrderPaid")
    assert delivery("e-1").follow_up_id("OrderPaid") != delivery("e-1").follow_up_id("Shipped")
