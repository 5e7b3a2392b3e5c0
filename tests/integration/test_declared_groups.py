"""Groups declared in the gateway's configuration (`[[groups]]`) against a real nats-server:
created and updated at start-up, and a Python group of that name joins them only with the
same settings."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
from collections import Counter
from pathlib import Path

import grpc
import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy

from consumers import Delivery, GroupConfigError, Worker, consumer
from gateway.config import GatewayConfig
from gateway.groups import GroupChange, GroupConfig, GroupDeclarationError, reconcile_groups
from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import gateway_pb2_grpc
from tests.integration.conftest import REPO, request, serving
from tests.integration.jetgate_up import jetgate
from tests.support.eventually import eventually

AUDIT = GroupConfig(
    name="audit",
    stream="ORDERS",
    filter_subjects=("orders.OrderPlaced.>",),
    event_types=("jetgate.examples.orders.v1.OrderPlaced",),
    max_deliver=3,
    backoff=(1.0, 2.0),
    ack_wait=20.0,
    max_ack_pending=50,
)


def _declaring(config: GatewayConfig, *groups: GroupConfig) -> GatewayConfig:
    return dataclasses.replace(config, groups=groups)


async def test_start_up_creates_the_declared_consumer(
    gateway_config: GatewayConfig, nc: Client
) -> None:
    async with serving(_declaring(gateway_config, AUDIT)):
        info = await nc.jetstream().consumer_info("ORDERS", "audit")
    config = info.config
    assert config.durable_name == "audit"
    assert config.filter_subjects == ["orders.OrderPlaced.>"] or config.filter_subject == (
        "orders.OrderPlaced.>"
    )
    assert config.ack_wait == 20.0
    assert config.max_deliver == 4  # 3 + the runtime's own (consumers/group.py)
    assert config.max_ack_pending == 50
    metadata = config.metadata or {}
    assert metadata[wire.DECLARED_METADATA] == wire.DECLARED_BY_CONFIG
    assert metadata[wire.EVENT_TYPES_METADATA] == "jetgate.examples.orders.v1.OrderPlaced"
    assert metadata[wire.BACKOFF_METADATA] == "1s,2s"
    assert "declared in the gateway's configuration" in (config.description or "")


async def test_the_demo_config_declares_audit(gateway_config: GatewayConfig, nc: Client) -> None:
    async with serving(gateway_config):
        info = await nc.jetstream().consumer_info("ORDERS", "audit")
    assert (info.config.metadata or {})[wire.DECLARED_METADATA] == wire.DECLARED_BY_CONFIG


async def test_a_restart_with_a_changed_declaration_updates_the_consumer(
    gateway_config: GatewayConfig, nc: Client
) -> None:
    js = nc.jetstream()
    async with serving(_declaring(gateway_config, AUDIT)):
        pass
    # An operator's own metadata (e.g. with `nats consumer edit`) survives the update.
    current = (await js.consumer_info("ORDERS", "audit")).config
    await js.add_consumer(
        "ORDERS",
        dataclasses.replace(current, metadata={**(current.metadata or {}), "team": "ops"}),
    )
    changed = dataclasses.replace(
        AUDIT, filter_subjects=("orders.>",), ack_wait=40.0, backoff=(5.0,), event_types=()
    )

    assert await reconcile_groups(js, [changed]) == [
        GroupChange(
            group="audit",
            stream="ORDERS",
            action="updated",
            changes=(
                "filter_subjects: [orders.OrderPlaced.>] -> [orders.>]",
                "ack_wait: 20s -> 40s",
                "backoff: 1s,2s -> 5s",
                "jetgate.event_types: jetgate.examples.orders.v1.OrderPlaced -> *",
            ),
        )
    ]
    async with serving(_declaring(gateway_config, changed)):
        pass  # a second start with the same declaration changes nothing
    assert await reconcile_groups(js, [changed]) == [
        GroupChange(group="audit", stream="ORDERS", action="unchanged")
    ]
    config = (await js.consumer_info("ORDERS", "audit")).config
    assert consumer.differences(config, changed.consumer_group().consumer_config()) == []
    assert config.ack_wait == 40.0
    assert (config.metadata or {})["team"] == "ops"
    assert (config.metadata or {})[wire.EVENT_TYPES_METADATA] == "*"


async def test_a_declaration_takes_over_a_python_groups_consumer(nc: Client) -> None:
    js = nc.jetstream()
    await js.add_stream(name="ORDERS", subjects=["orders.>"])
    python = dataclasses.replace(AUDIT, ack_wait=5.0).consumer_group()
    assert await consumer.ensure(js, python)
    (change,) = await reconcile_groups(js, [AUDIT])
    assert change.action == "updated"
    assert "ack_wait: 5s -> 20s" in change.changes
    assert "jetgate.declared: (none) -> config" in change.changes
    assert consumer.is_declared((await js.consumer_info("ORDERS", "audit")).config)


async def test_a_python_group_with_other_settings_is_refused_and_changes_nothing(
    gateway_config: GatewayConfig, nc: Client
) -> None:
    js = nc.jetstream()
    async with serving(_declaring(gateway_config, AUDIT)):
        before = (await js.consumer_info("ORDERS", "audit")).config
        differing = dataclasses.replace(
            AUDIT, ack_wait=10.0, max_deliver=7, backoff=(), filter_subjects=()
        ).consumer_group()

        with pytest.raises(GroupConfigError) as refused:
            await asyncio.wait_for(Worker(differing, nc).run(asyncio.Event()), 30)
        with pytest.raises(GroupConfigError):
            await consumer.ensure(js, differing)

        assert str(refused.value).startswith(
            "group audit is declared by the gateway's configuration; this group differs: "
            "filter_subjects [orders.OrderPlaced.>] (declared) vs [] (the whole stream) (here), "
            "ack_wait 20s (declared) vs 10s (here), max_deliver 3 (declared) vs 7 (here), "
            "backoff 1s,2s (declared) vs - (here)."
        )
        assert refused.value.exit_code == 2
        assert (await js.consumer_info("ORDERS", "audit")).config == before


async def test_a_python_group_with_the_same_settings_joins_and_shares_events(
    gateway_config: GatewayConfig, nc: Client
) -> None:
    js = nc.jetstream()
    async with serving(_declaring(gateway_config, AUDIT)) as gateway:
        before = (await js.consumer_info("ORDERS", "audit")).config
        handled: Counter[tuple[int, str]] = Counter()  # (member, order id)

        def member(index: int) -> Worker:
            group = AUDIT.consumer_group()  # the declared settings, its own handlers

            @group.handler(orders_pb2.OrderPlaced)
            async def record(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
                handled[index, event.order_id] += 1
                await asyncio.sleep(0)

            return Worker(group, nc, concurrency=2)

        # The gateway joins its own declaration too (what Subscribe does): types differ.
        assert await consumer.ensure(js, AUDIT.consumer_group())
        stop = asyncio.Event()
        members = [asyncio.create_task(member(i).run(stop)) for i in (1, 2)]
        try:
            async with grpc.aio.insecure_channel(gateway.address) as channel:
                stub = gateway_pb2_grpc.EventGatewayStub(channel)
                for i in range(40):
                    await stub.Publish(request(f"o-{i}"))

            def all_handled() -> bool:
                assert not any(task.done() for task in members), "a member stopped"
                return len(handled) == 40

            await eventually(all_handled)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*members), 30)

    ids = [order for _, order in handled]
    assert sorted(ids) == sorted(f"o-{i}" for i in range(40))  # each event once, none lost
    assert set(handled.values()) == {1}
    assert {index for index, _ in handled} == {1, 2}, "one member took every event"
    after = await js.consumer_info("ORDERS", "audit")
    assert after.config == before  # joined, not updated: description and metadata kept
    assert (after.num_ack_pending, after.num_pending) == (0, 0)


async def test_a_filter_outside_its_stream_refuses_to_start(
    gateway_config: GatewayConfig, nc: Client
) -> None:
    refunds = GroupConfig(name="refunds", stream="ORDERS", filter_subjects=("payments.>",))
    with pytest.raises(GroupDeclarationError, match=r"groups.refunds: filter 'payments.>'"):
        async with serving(_declaring(gateway_config, AUDIT, refunds)):
            pass
    # Checked before anything changed: not even the valid declaration's consumer exists.
    assert [c.name for c in await nc.jetstream().consumers_info("ORDERS")] == []


def test_serve_exits_2_on_a_refused_declaration(nats_url: str, tmp_path: Path) -> None:
    config = tmp_path / "jetgate.toml"
    config.write_text(
        (REPO / "jetgate.toml").read_text()
        + '\n[[groups]]\nname = "refunds"\nstream = "ORDERS"\nfilter_subjects = ["payments.>"]\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JETGATE_", "OTEL_"))}
    result = subprocess.run(
        [
            jetgate(),
            *("serve", "--config", str(config), "--nats-url", nats_url),
            *("--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"),
        ],
        env={**env, "PYTHONWARNINGS": "error"},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "groups.refunds: filter 'payments.>' matches no subject of stream ORDERS" in (
        result.stdout + result.stderr
    )


async def test_a_consumer_change_the_server_refuses_is_a_declaration_error(nc: Client) -> None:
    js = nc.jetstream()
    await js.add_stream(name="ORDERS", subjects=["orders.>"])
    await js.add_consumer(
        "ORDERS",
        ConsumerConfig(durable_name="audit", name="audit", deliver_policy=DeliverPolicy.NEW),
    )
    with pytest.raises(GroupDeclarationError, match="nats-server refused") as refused:
        await reconcile_groups(js, [AUDIT])
    assert refused.value.exit_code == 2


async def test_jetgate_consume_of_a_differing_group_exits_2(nc: Client, nats_url: str) -> None:
    js = nc.jetstream()
    await js.add_stream(name="ORDERS", subjects=["orders.>"])
    # tests.consumers.groups:recorder has ack_wait 10s and backoff 0.2s.
    declared = GroupConfig(name="recorder", stream="ORDERS", filter_subjects=("orders.>",))
    await reconcile_groups(js, [declared])
    before = (await js.consumer_info("ORDERS", "recorder")).config

    env = {k: v for k, v in os.environ.items() if not k.startswith(("JETGATE_", "OTEL_"))}
    worker = await asyncio.create_subprocess_exec(
        jetgate(),
        *("consume", "tests.consumers.groups:recorder", "--nats-url", nats_url),
        *("--metrics-listen", ""),
        env={**env, "PYTHONWARNINGS": "error"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        out, err = await asyncio.wait_for(worker.communicate(), 60)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    assert worker.returncode == 2, (out + err).decode()
    assert (
        "group recorder is declared by the gateway's configuration; this group differs: "
        "filter_subjects [orders.>] (declared) vs [orders.OrderPlaced.>] (here), "
        "ack_wait 30s (declared) vs 10s (here), backoff 1s,5s,30s (declared) vs 0.2s (here)."
    ) in err.decode()
    assert (await js.consumer_info("ORDERS", "recorder")).config == before
