"""Subscribe through a real gateway and nats-server: deliveries, settlements and their
confirmations, and the errors of opening."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TypeAlias

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from consumers import deadletter
from gateway import subscribe
from gateway.config import GatewayConfig
from gateway.embedded import NatsServer
from gateway.server import Gateway
from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import field_violations, order_placed, request, rich_status, serving
from tests.integration.subscriber import GROUP, Result, Settlement, subscribed, with_group
from tests.support.eventually import eventually

Stub: TypeAlias = "gateway_pb2_grpc.EventGatewayAsyncStub"


@pytest.fixture
async def gateway(gateway_config: GatewayConfig) -> AsyncIterator[Gateway]:
    config = with_group(gateway_config, backoff=(0.2,), max_deliver=3, ack_wait=2.0)
    async with serving(config) as server:
        yield server


@pytest.fixture
def js(nc: Client) -> JetStreamContext:
    return nc.jetstream()


async def publish(stub: Stub, *keys: str) -> list[gateway_pb2.PublishResponse]:
    return [await stub.Publish(request(key, headers={"tenant": "t-1"})) for key in keys]


async def test_deliveries_carry_the_stored_event_and_acks_are_confirmed(
    stub: Stub, js: JetStreamContext
) -> None:
    async with subscribed(stub, max_in_flight=8) as client:
        stored = await publish(stub, "o-1", "o-2", "o-3")
        await eventually(lambda: len(client.deliveries) == 3)
        assert client.subscribed is not None
        assert (client.subscribed.group, client.subscribed.stream) == (GROUP, "ORDERS")
        assert client.subscribed.max_in_flight == 8
        assert client.subscribed.ack_wait.ToTimedelta().total_seconds() == 2.0
        first = client.deliveries[0]
        event = first.event
        assert (event.id, event.key) == (stored[0].event_id, "o-1")
        assert (event.stream, event.subject, event.sequence) == (
            "ORDERS",
            stored[0].subject,
            stored[0].sequence,
        )
        assert event.payload == _packed(order_placed("o-1"))
        assert dict(event.headers) == {"tenant": "t-1"}
        assert event.HasField("time")
        assert first.HasField("stored_time")
        assert first.attempt == 1
        client.settle(*(d.ack_id for d in client.deliveries))
        results = await eventually(lambda: [client.result(d.ack_id) for d in client.deliveries])
        assert {r.status for r in results} == {Result.STATUS_APPLIED}
        info = await eventually(lambda: _settled_info(js))
        assert info.num_pending == 0


async def test_nak_with_delay_redelivers_with_attempt_two(stub: Stub) -> None:
    async with subscribed(stub) as client:
        await publish(stub, "o-1")
        first = await eventually(lambda: client.delivery(0))
        client.settle(first.ack_id, action=Settlement.ACTION_NAK, delay=0.3)
        again = await eventually(lambda: client.delivery(1))
        assert again.event.id == first.event.id
        assert again.attempt == 2
        assert again.ack_id != first.ack_id
        assert client.result(first.ack_id).status == Result.STATUS_APPLIED


async def test_reject_dead_letters_with_the_reason(stub: Stub, js: JetStreamContext) -> None:
    async with subscribed(stub) as client:
        [stored] = await publish(stub, "o-1")
        first = await eventually(lambda: client.delivery(0))
        client.settle(first.ack_id, action=Settlement.ACTION_REJECT, reason="unknown customer")
        await eventually(lambda: client.result(first.ack_id).status == Result.STATUS_APPLIED)
    letters = [letter async for letter in deadletter.dead_letters(js, GROUP)]
    assert [(x.event_id, x.reason, x.error) for x in letters] == [
        (stored.event_id, "reject", "unknown customer")
    ]


async def test_an_unsettled_delivery_fails_its_attempt_after_ack_wait(stub: Stub) -> None:
    async with subscribed(stub) as client:
        await publish(stub, "o-1")
        first = await eventually(lambda: client.delivery(0))
        # Not settled: after ack_wait (2 s) the attempt fails, retried after backoff.
        again = await eventually(lambda: client.delivery(1))
        assert (again.event.id, again.attempt) == (first.event.id, 2)
        client.settle(first.ack_id, again.ack_id)
        expired = await eventually(lambda: client.result(first.ack_id))
        assert expired.status == Result.STATUS_EXPIRED
        assert (await eventually(lambda: client.result(again.ack_id))).status == (
            Result.STATUS_APPLIED
        )


async def test_in_progress_keeps_a_delivery_alive(stub: Stub) -> None:
    async with subscribed(stub) as client:
        await publish(stub, "o-1", "o-2")
        await eventually(lambda: len(client.deliveries) == 2)
        kept, left = client.deliveries

        def keep_alive_until_left_expired() -> bool:
            client.settle(kept.ack_id, action=Settlement.ACTION_IN_PROGRESS)
            return any(d.event.id == left.event.id for d in client.deliveries[2:])

        # `left` fails its attempt after ack_wait (2 s) and comes back; `kept` does not.
        await eventually(keep_alive_until_left_expired, interval=0.2)
        client.settle(kept.ack_id)
        await eventually(lambda: _count(client.results, kept.ack_id) >= 2)
        statuses = {r.status for r in client.results if r.ack_id == kept.ack_id}
        assert statuses == {Result.STATUS_APPLIED}
        assert not any(d.event.id == kept.event.id for d in client.deliveries[2:])


def _count(results: list[gateway_pb2.SettlementResult], ack_id: str) -> int:
    return sum(1 for r in results if r.ack_id == ack_id)


async def test_every_settlement_is_confirmed_once(stub: Stub) -> None:
    async with subscribed(stub) as client:
        await publish(stub, "o-1")
        first = await eventually(lambda: client.delivery(0))
        client.settle(first.ack_id)
        client.settle(first.ack_id)
        client.settle("424242", "not-an-id")
        client.send(
            gateway_pb2.SubscribeRequest(
                settlements=[
                    Settlement(ack_id=first.ack_id, action=Settlement.ACTION_REJECT),
                    Settlement(ack_id=first.ack_id),
                ]
            )
        )
        await eventually(lambda: len(client.results) == 6)
        assert [(r.ack_id, r.status) for r in client.results] == [
            (first.ack_id, Result.STATUS_APPLIED),
            (first.ack_id, Result.STATUS_ALREADY_SETTLED),
            ("424242", Result.STATUS_UNKNOWN),
            ("not-an-id", Result.STATUS_UNKNOWN),
            (first.ack_id, Result.STATUS_INVALID),
            (first.ack_id, Result.STATUS_INVALID),
        ]
        assert client.error is None


async def test_an_undeclared_group_is_not_found(stub: Stub) -> None:
    async with subscribed(stub, group="nobody") as client:
        error = await eventually(client.failure)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    info = error_details_pb2.ResourceInfo()
    assert rich_status(error).details[0].Unpack(info)
    assert info.resource_name == "nobody"


@pytest.mark.parametrize(
    ("options", "field"),
    [({"max_in_flight": 0}, "open.max_in_flight"), ({"stream": "OTHER"}, "open.stream")],
)
async def test_a_bad_open_is_invalid(stub: Stub, options: dict[str, object], field: str) -> None:
    async with subscribed(stub, **options) as client:
        error = await eventually(client.failure)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(rich_status(error))


async def test_a_second_open_is_invalid(stub: Stub) -> None:
    async with subscribed(stub) as client:
        await eventually(lambda: client.subscribed is not None)
        client.send(gateway_pb2.SubscribeRequest(open=gateway_pb2.SubscribeOpen(group=GROUP)))
        error = await eventually(client.failure)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "open" in field_violations(rich_status(error))


async def test_a_first_message_without_open_is_invalid(stub: Stub) -> None:
    call = stub.Subscribe(iter([gateway_pb2.SubscribeRequest(add_credits=1)]))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in call:
            pass
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "open" in field_violations(rich_status(raised.value))


async def test_members_counts_open_streams(gateway: Gateway, stub: Stub) -> None:
    subscriptions = gateway._subscriptions  # what Admin reads
    async with subscribed(stub) as one, subscribed(stub) as two:
        await eventually(lambda: None not in (one.subscribed, two.subscribed))
        assert subscriptions.members(GROUP) == 2
    await eventually(lambda: subscriptions.members(GROUP) == 0)


def _packed(message: orders_pb2.OrderPlaced) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


async def _settled_info(js: JetStreamContext) -> ConsumerInfo:
    info: ConsumerInfo = await js.consumer_info("ORDERS", GROUP)
    assert info.num_ack_pending == 0, info
    return info


async def test_the_member_follows_a_replaced_connection(gateway: Gateway, stub: Stub) -> None:
    async with subscribed(stub) as client:
        await eventually(lambda: client.subscribed is not None)
        # Headers push the message over max_payload: nats-server closes the connection for
        # good and the gateway replaces it (nats-py does not reconnect after that).
        closed = gateway.nats
        await closed.publish("oversize", b"x" * closed.max_payload, headers={"X-Over": "1"})
        await eventually(lambda: closed.is_closed and gateway.nats is not closed)
        [stored] = await eventually(lambda: publish(stub, "o-after"), retry_on=(grpc.RpcError,))
        delivery = await eventually(lambda: client.delivery(0))
        assert delivery.event.id == stored.event_id
        client.settle(delivery.ack_id)
        result = await eventually(lambda: client.result(delivery.ack_id))
        assert result.status == Result.STATUS_APPLIED
        assert client.error is None


async def test_subscribe_is_unavailable_while_nats_is_away(
    gateway: Gateway, stub: Stub, nats_server: NatsServer
) -> None:
    nats_server.stop()
    await eventually(lambda: not gateway.nats.is_connected)
    async with subscribed(stub) as client:
        error = await eventually(client.failure)
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_an_idle_stream_gets_heartbeats(stub: Stub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subscribe, "HEARTBEAT_INTERVAL", 0.2)
    async with subscribed(stub, max_in_flight=3) as client:
        await publish(stub, "o-1")
        await eventually(lambda: client.delivery(0))
        await eventually(lambda: len(client.heartbeats) > 0)
        beat = client.heartbeats[-1]
        assert (beat.in_flight, beat.max_in_flight) == (1, 3)


async def test_members_keep_the_declared_consumer_settings(
    stub: Stub, js: JetStreamContext
) -> None:
    async with subscribed(stub) as client:
        await eventually(lambda: client.subscribed is not None)
        info = await js.consumer_info("ORDERS", GROUP)
    # A member's handlers (one per event type it receives) do not rewrite the consumer's
    # description and metadata: the declaration alone decides them.
    assert info.config.metadata is not None
    for written in (info.config.metadata[wire.EVENT_TYPES_METADATA], info.config.description):
        assert "OrderPlaced" not in written


async def test_a_declared_consumer_deleted_at_runtime_comes_back_declared(
    stub: Stub, js: JetStreamContext
) -> None:
    async with subscribed(stub) as client:
        await eventually(lambda: client.subscribed is not None)
        await js.delete_consumer("ORDERS", GROUP)
        [stored] = await publish(stub, "o-after")
        # The member's worker makes the consumer again: as declared, not as its own group.
        delivery = await eventually(lambda: client.delivery(0))
        assert delivery.event.id == stored.event_id
        info = await js.consumer_info("ORDERS", GROUP)
    assert info.config.metadata is not None
    assert info.config.metadata.get(wire.DECLARED_METADATA) == wire.DECLARED_BY_CONFIG
    assert "OrderPlaced" not in info.config.metadata[wire.EVENT_TYPES_METADATA]
    assert info.config.max_deliver == 3 + 1  # the declaration's max_deliver (+1: see group.py)


async def test_times_arrive_to_the_microsecond(stub: Stub) -> None:
    sent = request("o-1")
    sent.event.time.FromDatetime(datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC))
    await stub.Publish(sent)
    async with subscribed(stub) as client:
        delivery = await eventually(lambda: client.delivery(0))
    assert delivery.event.time == sent.event.time
    stored_time = delivery.stored_time.ToDatetime(UTC)
    assert abs((datetime.now(UTC) - stored_time).total_seconds()) < 3600


async def test_credits_are_capped_by_max_ack_pending(
    gateway_config: GatewayConfig, nats_url: str
) -> None:
    config = with_group(gateway_config, max_ack_pending=3)
    async with (
        serving(config) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub: Stub = gateway_pb2_grpc.EventGatewayStub(channel)
        async with subscribed(stub, max_in_flight=100) as client:
            await eventually(lambda: client.subscribed is not None)
            assert client.subscribed is not None
            assert client.subscribed.max_in_flight == 3
