"""Admin ListGroups/GetGroup against a real gateway and nats-server: a group's lag and
unsettled events as JetStream counts them, its settings as the group (not its consumer)
has them, declared groups, and which stream a group name means."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import grpc.aio
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from consumers import ConsumerGroup, Delivery, Worker
from gateway.admin import AdminServicer
from gateway.config import GatewayConfig, StreamConfig
from gateway.groups import GroupConfig
from gateway.registry import TypeRegistry
from gateway.routing import Router
from gateway.security import ListenerSecurity
from gateway.server import Gateway
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2_grpc
from tests.consumers.conftest import running
from tests.integration.admin_support import admin, admin_stub, resource, violations
from tests.integration.conftest import request, serving
from tests.support.eventually import eventually

__all__ = ["admin"]  # the fixture

PLACED = orders_pb2.OrderPlaced.DESCRIPTOR.full_name
PAID = orders_pb2.OrderPaid.DESCRIPTOR.full_name
PAYMENTS = StreamConfig(name="PAYMENTS", subjects=("payments.>",))
AUDIT = GroupConfig(name="audit", stream="ORDERS", event_types=("*.OrderPlaced", "*.OrderPaid"))


async def ensure_consumer(js: JetStreamContext, stream: str, group: ConsumerGroup) -> None:
    """The group's consumer, made unless it exists (a reconciling gateway may have made it)."""
    try:
        await js.consumer_info(stream, group.name)
    except NotFoundError:
        await js.add_consumer(stream, group.consumer_config())


def billing(max_ack_pending: int = 50) -> ConsumerGroup:
    group = ConsumerGroup(
        "billing",
        stream="ORDERS",
        filter_subjects=["orders.OrderPlaced.>"],
        max_deliver=3,
        backoff=(1.0, 2.5),
        ack_wait=30.0,
        max_ack_pending=max_ack_pending,
    )

    @group.handler(orders_pb2.OrderPlaced)
    async def charge(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        """Never called: the test pulls by hand."""

    return group


async def test_a_group_shows_lag_unsettled_and_redelivered_events_and_its_own_settings(
    admin: admin_pb2_grpc.AdminAsyncStub, stub: gateway_pb2_grpc.EventGatewayAsyncStub, nc: Client
) -> None:
    for key in ("o-1", "o-2", "o-3", "o-4", "o-5"):
        await stub.Publish(request(key), timeout=20)
    js = nc.jetstream()
    # max_ack_pending 2: with two unsettled, the next delivery can only be a redelivery.
    await js.add_consumer("ORDERS", billing(max_ack_pending=2).consumer_config())
    puller = await js.pull_subscribe_bind("billing", "ORDERS")
    first, second = await puller.fetch(2, timeout=10)
    await first.nak()
    [again] = await puller.fetch(1, timeout=10)  # o-1 once more
    assert again.metadata.num_delivered == 2

    got = await admin.GetGroup(admin_pb2.GetGroupRequest(group="billing"), timeout=20)

    assert (got.name, got.stream, list(got.filter_subjects)) == (
        "billing",
        "ORDERS",
        ["orders.OrderPlaced.>"],
    )
    # Stored 5, delivered 2 (o-1 twice): 3 not yet delivered, 2 unsettled, 1 redelivered.
    assert (got.pending, got.ack_pending, got.redelivered) == (3, 2, 1)
    assert got.last_delivered_sequence == 2
    assert got.last_active.ToDatetime(UTC) <= datetime.now(UTC)
    assert got.HasField("last_active")
    # The group's max_deliver (its consumer's is one more) and backoff (the consumer has none).
    assert got.max_deliver == 3
    assert [b.ToNanoseconds() for b in got.backoff] == [1_000_000_000, 2_500_000_000]
    assert got.ack_wait.ToSeconds() == 30
    assert got.max_ack_pending == 2
    assert list(got.event_types) == [PLACED]
    assert (got.declared, got.dead_letters, got.members_connected) == (False, 0, 0)
    await second.ack()
    await again.ack()


async def test_an_idle_worker_is_a_waiting_pull(
    admin: admin_pb2_grpc.AdminAsyncStub, nc: Client
) -> None:
    group = billing()
    worker = Worker(group, nc)
    async with running(worker):

        async def waiting() -> bool:
            reply = await admin.ListGroups(admin_pb2.ListGroupsRequest(), timeout=20)
            return any(g.name == "billing" and g.waiting_pulls > 0 for g in reply.groups)

        await eventually(waiting)


@pytest.fixture
def two_streams(gateway_config: GatewayConfig) -> GatewayConfig:
    """The demo config plus a PAYMENTS stream and the declared group `audit` on ORDERS."""
    return dataclasses.replace(
        gateway_config, streams=(*gateway_config.streams, PAYMENTS), groups=(AUDIT,)
    )


@pytest.fixture
async def admin2(two_streams: GatewayConfig) -> AsyncIterator[admin_pb2_grpc.AdminAsyncStub]:
    async with serving(two_streams) as gateway, admin_stub(gateway) as stub:
        yield stub


async def test_groups_of_every_managed_stream_declared_or_not(
    admin2: admin_pb2_grpc.AdminAsyncStub, nc: Client
) -> None:
    js = nc.jetstream()
    await ensure_consumer(js, "ORDERS", AUDIT.consumer_group())
    await js.add_consumer("ORDERS", ConsumerGroup("shared", stream="ORDERS").consumer_config())
    await js.add_consumer("PAYMENTS", ConsumerGroup("shared", stream="PAYMENTS").consumer_config())
    await js.add_stream(name="ELSEWHERE", subjects=["elsewhere.>"])  # not the gateway's
    await js.add_consumer("ELSEWHERE", ConsumerGroup("other", stream="ELSEWHERE").consumer_config())
    ordered = await js.subscribe("orders.>", ordered_consumer=True)  # ephemeral: not a group

    listed = (await admin2.ListGroups(admin_pb2.ListGroupsRequest(), timeout=20)).groups
    assert [(g.stream, g.name, g.declared) for g in listed] == [
        ("ORDERS", "audit", True),
        ("ORDERS", "shared", False),
        ("PAYMENTS", "shared", False),
    ]
    only = await admin2.ListGroups(admin_pb2.ListGroupsRequest(stream="PAYMENTS"), timeout=20)
    assert [(g.stream, g.name) for g in only.groups] == [("PAYMENTS", "shared")]

    # A declared group: found on its stream; its event types are the routed ones its globs admit.
    audit = await admin2.GetGroup(admin_pb2.GetGroupRequest(group="audit"), timeout=20)
    assert (audit.stream, audit.declared, audit.max_deliver) == ("ORDERS", True, AUDIT.max_deliver)
    assert sorted(audit.event_types) == sorted([PLACED, PAID])

    # A name on two streams must say which.
    with pytest.raises(grpc.aio.AioRpcError) as ambiguous:
        await admin2.GetGroup(admin_pb2.GetGroupRequest(group="shared"), timeout=20)
    assert violations(ambiguous.value)["stream"] == (
        "group shared is on streams ORDERS, PAYMENTS: name one"
    )
    payments = admin_pb2.GetGroupRequest(group="shared", stream="PAYMENTS")
    assert (await admin2.GetGroup(payments, timeout=20)).stream == "PAYMENTS"
    await ordered.unsubscribe()


async def test_get_group_refusals(admin2: admin_pb2_grpc.AdminAsyncStub, nc: Client) -> None:
    await nc.jetstream().add_stream(name="ELSEWHERE", subjects=["elsewhere.>"])
    other = ConsumerGroup("other", stream="ELSEWHERE").consumer_config()
    await nc.jetstream().add_consumer("ELSEWHERE", other)
    cases = [
        (admin_pb2.GetGroupRequest(group="ghost"), ("group", "ghost")),
        (admin_pb2.GetGroupRequest(group="other"), ("group", "other")),  # not a managed stream's
        (admin_pb2.GetGroupRequest(group="ghost", stream="ELSEWHERE"), ("stream", "ELSEWHERE")),
    ]
    for asked, (kind, name) in cases:
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await admin2.GetGroup(asked, timeout=20)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND, asked
        found = resource(unknown.value)
        assert (found.resource_type, found.resource_name) == (kind, name)
    for asked, field in (
        (admin_pb2.GetGroupRequest(group=""), "group"),
        (admin_pb2.GetGroupRequest(group="no spaces"), "group"),
        (admin_pb2.GetGroupRequest(group="audit", stream="a.b"), "stream"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await admin2.GetGroup(asked, timeout=20)
        assert field in violations(bad.value), asked
    with pytest.raises(grpc.aio.AioRpcError) as unknown_stream:
        await admin2.ListGroups(admin_pb2.ListGroupsRequest(stream="ELSEWHERE"), timeout=20)
    assert unknown_stream.value.code() == grpc.StatusCode.NOT_FOUND


async def test_members_connected_come_from_the_given_count(
    gateway_config: GatewayConfig, nc: Client
) -> None:
    """The servicer asks `members(group)` (the Subscribe servicer's count once wired)."""
    await nc.jetstream().add_stream(name="ORDERS", subjects=["orders.>"])
    await nc.jetstream().add_consumer("ORDERS", billing().consumer_config())
    registry = TypeRegistry.load(gateway_config.type_modules)
    servicer = AdminServicer(
        config=gateway_config,
        registry=registry,
        router=Router.build(gateway_config.routes, registry, gateway_config.streams),
        nats=lambda: nc,
        security=ListenerSecurity(gateway_config),
        members=lambda group: {"billing": 2}.get(group, 0),
    )
    server = grpc.aio.server()
    admin_pb2_grpc.add_AdminServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            got = await admin_pb2_grpc.AdminStub(channel).GetGroup(
                admin_pb2.GetGroupRequest(group="billing"), timeout=20
            )
        assert got.members_connected == 2
    finally:
        await server.stop(None)


async def test_a_gateway_answers_for_its_groups_while_events_flow(
    gateway: Gateway, admin: admin_pb2_grpc.AdminAsyncStub, nc: Client
) -> None:
    """Concurrent calls share the connection without trouble."""
    await nc.jetstream().add_consumer("ORDERS", billing().consumer_config())
    calls = [
        admin.GetGroup(admin_pb2.GetGroupRequest(group="billing"), timeout=20) for _ in range(8)
    ]
    answers = await asyncio.gather(*calls)
    assert {a.name for a in answers} == {"billing"}


async def test_the_gateways_declared_groups_are_declared_with_their_routed_types(
    gateway: Gateway, admin: admin_pb2_grpc.AdminAsyncStub
) -> None:
    """Reconciled at start-up, its consumer carries type globs ("*": every routed type)."""
    [declared] = gateway.config.groups  # the demo's audit, for any type
    assert not declared.event_types

    got = await admin.GetGroup(admin_pb2.GetGroupRequest(group=declared.name), timeout=20)

    assert (got.name, got.stream, got.declared) == (declared.name, declared.stream, True)
    assert list(got.filter_subjects) == list(declared.filter_subjects)
    assert got.max_deliver == declared.max_deliver
    assert list(got.event_types) == gateway.router.event_types_by_stream()[declared.stream]
