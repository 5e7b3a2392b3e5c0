"""Stream reconciliation against a real nats-server: create, no-op, safe and unsafe changes."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StoreCompression
from nats.js.errors import NotFoundError

from gateway.config import StreamConfig
from gateway.streams import (
    EVENT_TYPES_KEY,
    StreamChange,
    StreamUpdateError,
    UnsafeStreamChange,
    reconcile_streams,
)

PLACED = "jetgate.examples.orders.v1.OrderPlaced"
SHIPPED = "jetgate.examples.orders.v1.OrderShipped"
TYPES = {"ORDERS": [SHIPPED, PLACED]}
ORDERS = StreamConfig(
    name="ORDERS",
    subjects=("orders.>",),
    max_age=3600.0,
    max_bytes=1 << 20,
    max_msgs=1000,
    max_msg_size=4096,
    duplicate_window=60.0,
    description="Order lifecycle events",
    metadata={"owner": "team-orders"},
)


@pytest.fixture
def js(nc: Client) -> JetStreamContext:
    return nc.jetstream()


async def _stored(js: JetStreamContext, config: StreamConfig) -> Any:
    """Create `config` and store one event in it; the stream's info afterwards."""
    await reconcile_streams(js, [config], TYPES)
    await js.publish(config.subjects[0].replace(">", "OrderPlaced.o-1"), b"event")
    return await js.stream_info(config.name)


async def test_creates_a_missing_stream_that_explains_itself(js: JetStreamContext) -> None:
    changes = await reconcile_streams(js, [ORDERS], TYPES)

    assert changes == [StreamChange(stream="ORDERS", action="created")]
    config = (await js.stream_info("ORDERS")).config
    assert config.description == "Order lifecycle events"
    assert config.metadata is not None
    assert config.metadata["owner"] == "team-orders"
    assert config.metadata[EVENT_TYPES_KEY] == f"{PLACED},{SHIPPED}"
    assert config.subjects == ["orders.>"]
    assert (config.storage, config.retention, config.discard) == ("file", "limits", "old")
    assert (config.max_age, config.duplicate_window) == (3600.0, 60.0)
    assert (config.max_bytes, config.max_msgs, config.max_msg_size) == (1 << 20, 1000, 4096)
    assert config.num_replicas == 1
    assert config.allow_atomic is True
    assert not config.allow_msg_ttl


async def test_second_run_is_a_no_op(js: JetStreamContext) -> None:
    defaults = StreamConfig(name="DEFAULTS", subjects=("defaults.>",))
    await reconcile_streams(js, [ORDERS, defaults], TYPES)
    before = [(await js.stream_info(n)).config for n in ("ORDERS", "DEFAULTS")]

    changes = await reconcile_streams(js, [ORDERS, defaults], TYPES)

    assert [(c.stream, c.action, c.changes) for c in changes] == [
        ("ORDERS", "unchanged", ()),
        ("DEFAULTS", "unchanged", ()),
    ]
    assert [(await js.stream_info(n)).config for n in ("ORDERS", "DEFAULTS")] == before
    assert str(changes[0]) == "stream ORDERS: unchanged"


async def test_concurrent_gateways_starting_agree(js: JetStreamContext) -> None:
    first, second = await asyncio.gather(
        reconcile_streams(js, [ORDERS], TYPES), reconcile_streams(js, [ORDERS], TYPES)
    )
    assert {first[0].action, second[0].action} <= {"created", "unchanged"}
    assert (await reconcile_streams(js, [ORDERS], TYPES))[0].action == "unchanged"


async def test_safe_changes_are_applied_and_keep_the_data(js: JetStreamContext) -> None:
    await _stored(js, ORDERS)
    desired = replace(
        ORDERS,
        description="Orders, v2",
        subjects=("orders.>", "returns.>"),
        max_age=7200.0,
        max_bytes=-1,
        max_msgs=5000,
        max_msg_size=8192,
        duplicate_window=30.0,
        discard="new",
        allow_msg_ttl=True,
        allow_atomic=False,
        metadata={"owner": "team-orders", "tier": "gold"},
    )

    (change,) = await reconcile_streams(js, [desired], {"ORDERS": [PLACED]})

    assert change.action == "updated"
    assert not any(c.problem for c in change.changes)
    assert {c.field for c in change.changes} == {
        "description",
        "subjects",
        "max_age",
        "max_bytes",
        "max_msgs",
        "max_msg_size",
        "duplicate_window",
        "discard",
        "allow_msg_ttl",
        "allow_atomic",
        "metadata",
    }
    assert "max_age: 3600s -> 7200s" in str(change)
    assert "max_bytes: 1048576 -> unlimited" in str(change)
    info = await js.stream_info("ORDERS")
    config = info.config
    assert info.state.messages == 1
    assert config.description == "Orders, v2"
    assert config.subjects == ["orders.>", "returns.>"]
    assert (config.max_age, config.duplicate_window) == (7200.0, 30.0)
    assert (config.max_bytes, config.max_msgs, config.max_msg_size) == (-1, 5000, 8192)
    assert config.discard == "new"
    assert config.allow_msg_ttl is True
    assert not config.allow_atomic
    assert config.metadata is not None
    assert config.metadata["tier"] == "gold"
    assert config.metadata[EVENT_TYPES_KEY] == PLACED
    again = await reconcile_streams(js, [desired], {"ORDERS": [PLACED]})
    assert again[0].action == "unchanged"


async def test_settings_jetgate_does_not_manage_are_kept(js: JetStreamContext) -> None:
    config = (await _stored(js, ORDERS)).config
    await js.update_stream(replace(config, compression=StoreCompression.S2))

    (change,) = await reconcile_streams(js, [replace(ORDERS, description="new")], TYPES)

    assert [c.field for c in change.changes] == ["description"]
    assert (await js.stream_info("ORDERS")).config.compression == "s2"


UNSAFE: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("storage", {}, {"storage": "memory"}),
    ("retention", {}, {"retention": "interest"}),
    ("retention", {}, {"retention": "workqueue"}),
    ("retention", {"retention": "interest"}, {"retention": "limits"}),
    ("max_age", {}, {"max_age": 60.0}),
    ("max_age", {"max_age": 0.0}, {"max_age": 86400.0}),
    ("max_bytes", {}, {"max_bytes": 1 << 19}),
    ("max_bytes", {"max_bytes": -1}, {"max_bytes": 1 << 30}),
    ("max_msgs", {}, {"max_msgs": 10}),
    ("max_msgs", {"max_msgs": 0}, {"max_msgs": 10}),
    ("max_msg_size", {}, {"max_msg_size": 1024}),
    ("max_msg_size", {"max_msg_size": -1}, {"max_msg_size": 1 << 20}),
    ("subjects", {"subjects": ("orders.>", "old.>")}, {"subjects": ("orders.>",)}),
    ("subjects", {}, {"subjects": ("orders.placed.>",)}),
    ("allow_msg_ttl", {"allow_msg_ttl": True}, {"allow_msg_ttl": False}),
    ("discard", {"discard": "new"}, {"discard": "old"}),
]


@pytest.mark.parametrize(
    ("field", "start", "change"), UNSAFE, ids=[f"{f}-{c}" for f, _, c in UNSAFE]
)
async def test_unsafe_changes_are_refused_and_change_nothing(
    js: JetStreamContext, field: str, start: dict[str, Any], change: dict[str, Any]
) -> None:
    existing = replace(ORDERS, **start)
    before = await _stored(js, existing)
    # A safe change rides along: it must not be applied either.
    desired = replace(existing, description="changed too", **change)

    with pytest.raises(UnsafeStreamChange) as refused:
        await reconcile_streams(js, [desired], TYPES)

    (unsafe,) = refused.value.unsafe["ORDERS"]
    assert unsafe.field == field
    assert unsafe.problem
    message = str(refused.value)
    assert f"stream ORDERS: {field}: {unsafe.current} -> {unsafe.desired}" in message
    assert "no stream was changed" in message
    assert "nats stream edit" in message
    assert "description" not in message
    after = await js.stream_info("ORDERS")
    assert after.config == before.config
    assert after.state.messages == before.state.messages  # 0 for interest: no consumers


async def test_one_unsafe_stream_blocks_every_stream(js: JetStreamContext) -> None:
    await _stored(js, ORDERS)
    other = StreamConfig(name="BILLING", subjects=("billing.>",))
    lowered = replace(ORDERS, max_msgs=1, storage="memory")

    with pytest.raises(UnsafeStreamChange) as refused:
        await reconcile_streams(js, [other, lowered], TYPES)

    assert [c.field for c in refused.value.unsafe["ORDERS"]] == ["storage", "max_msgs"]
    assert "storage: file -> memory" in str(refused.value)
    assert "max_msgs: 1000 -> 1" in str(refused.value)
    with pytest.raises(NotFoundError):
        await js.stream_info("BILLING")


async def test_server_refusal_is_reported_with_its_reason(js: JetStreamContext) -> None:
    with pytest.raises(StreamUpdateError, match=r"ORDERS.*refused to create.*replicas > 1"):
        await reconcile_streams(js, [replace(ORDERS, replicas=3)], TYPES)

    await reconcile_streams(js, [ORDERS], TYPES)
    with pytest.raises(StreamUpdateError, match=r"replicas: 1 -> 3.*non-clustered"):
        await reconcile_streams(js, [replace(ORDERS, replicas=3)], TYPES)
    assert (await js.stream_info("ORDERS")).config.num_replicas == 1
