"""Publish: what is stored, de-duplication, preconditions."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

import grpc
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from gateway.config import GatewayConfig
from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import event_pb2, gateway_pb2_grpc
from tests.integration.conftest import detail, order_placed, request, rich_status, serving

Stub = gateway_pb2_grpc.EventGatewayStub


async def test_publish_stores_subject_payload_and_every_header(stub: Stub, nc: Client) -> None:
    req = request("o-42", event_id="evt-1", headers={"tenant": "acme", "X-Request-Id": "r1"})
    req.event.source = "/checkout"
    req.event.time.FromDatetime(datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=UTC))

    reply = await stub.Publish(req)

    assert (reply.event_id, reply.stream, reply.subject) == (
        "evt-1",
        "ORDERS",
        "orders.OrderPlaced.o-42",
    )
    assert reply.sequence == 1
    assert not reply.duplicate
    stored = await nc.jetstream().get_last_msg("ORDERS", "orders.OrderPlaced.o-42")
    assert stored.seq == 1
    assert stored.data == order_placed("o-42").SerializeToString()
    assert orders_pb2.OrderPlaced.FromString(stored.data) == order_placed("o-42")
    headers = stored.headers or {}
    assert headers == {
        "Nats-Msg-Id": "evt-1",
        "ce-specversion": "1.0",
        "ce-id": "evt-1",
        "ce-type": "jetgate.examples.orders.v1.OrderPlaced",
        "ce-source": "/checkout",
        "ce-time": "2026-11-26T12:00:00.123456Z",
        "ce-subject": "o-42",
        "ce-dataschema": "https://type.googleapis.com/jetgate.examples.orders.v1.OrderPlaced",
        "ce-datacontenttype": "application/protobuf",
        "content-type": "application/protobuf",
        "tenant": "acme",
        "X-Request-Id": "r1",
    }


async def test_generated_id_is_uuid7_and_defaults_fill_the_envelope(stub: Stub, nc: Client) -> None:
    before = datetime.now(UTC)
    reply = await stub.Publish(request("o-1"))
    parsed = uuid.UUID(reply.event_id)
    assert parsed.version == 7
    stored = await nc.jetstream().get_last_msg("ORDERS", reply.subject)
    headers = stored.headers or {}
    assert headers["Nats-Msg-Id"] == headers["ce-id"] == reply.event_id
    assert headers["ce-source"] == "jetgate"
    assert before <= wire.parse_time(headers["ce-time"]) <= datetime.now(UTC)


async def test_same_id_again_is_a_duplicate_with_the_original_sequence(
    stub: Stub, nc: Client
) -> None:
    first = await stub.Publish(request("o-1", event_id="same"))
    await stub.Publish(request("o-2"))
    again = await stub.Publish(request("o-1", event_id="same"))
    assert again.duplicate
    assert not first.duplicate
    assert again.sequence == first.sequence == 1
    info = await nc.jetstream().stream_info("ORDERS")
    assert info.state.messages == 2


def _pre(**kwargs: object) -> event_pb2.Precondition:
    return event_pb2.Precondition(**kwargs)  # type: ignore[arg-type]


async def test_expected_last_subject_sequence(stub: Stub, nc: Client) -> None:
    ok = await stub.Publish(request("o-1", precondition=_pre(expected_last_subject_sequence=0)))
    await stub.Publish(request("o-2"))  # another subject: does not count
    again = await stub.Publish(
        request("o-1", precondition=_pre(expected_last_subject_sequence=ok.sequence))
    )
    assert again.sequence == 3
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Publish(request("o-1", precondition=_pre(expected_last_subject_sequence=1)))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    conflict = detail(rich_status(caught.value), event_pb2.SequenceConflict)
    assert conflict.condition == "expected_last_subject_sequence"
    assert conflict.subject == "orders.OrderPlaced.o-1"
    assert (conflict.expected_sequence, conflict.actual_sequence) == (1, 3)
    assert (await nc.jetstream().stream_info("ORDERS")).state.messages == 3


async def test_expected_last_key_sequence_covers_every_type_of_the_key(
    stub: Stub, nc: Client
) -> None:
    placed = await stub.Publish(request("o-9", precondition=_pre(expected_last_key_sequence=0)))
    paid = orders_pb2.OrderPaid(order_id="o-9", payment_id="p-1")
    await stub.Publish(
        request("o-9", message=paid, precondition=_pre(expected_last_key_sequence=placed.sequence))
    )
    shipped = orders_pb2.OrderShipped(order_id="o-9", carrier="dhl")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        # Stale: the aggregate moved on to sequence 2 (OrderPaid), another subject.
        await stub.Publish(
            request(
                "o-9",
                message=shipped,
                precondition=_pre(expected_last_key_sequence=placed.sequence),
            )
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    conflict = detail(rich_status(caught.value), event_pb2.SequenceConflict)
    assert conflict.subject == "orders.*.o-9"
    assert (conflict.expected_sequence, conflict.actual_sequence) == (1, 2)
    with pytest.raises(NotFoundError):
        await nc.jetstream().get_last_msg("ORDERS", "orders.OrderShipped.o-9")


async def test_expected_last_sequence_of_the_stream(stub: Stub) -> None:
    await stub.Publish(request("a", precondition=_pre(expected_last_sequence=0)))
    await stub.Publish(request("b", precondition=_pre(expected_last_sequence=1)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Publish(request("c", precondition=_pre(expected_last_sequence=1)))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    conflict = detail(rich_status(caught.value), event_pb2.SequenceConflict)
    assert (conflict.condition, conflict.expected_sequence, conflict.actual_sequence) == (
        "expected_last_sequence",
        1,
        2,
    )


async def test_expected_last_event_id(stub: Stub, nc: Client) -> None:
    await stub.Publish(request("a", event_id="e1"))
    await stub.Publish(request("b", event_id="e2", precondition=_pre(expected_last_event_id="e1")))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Publish(
            request("c", event_id="e3", precondition=_pre(expected_last_event_id="e1"))
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    conflict = detail(rich_status(caught.value), event_pb2.SequenceConflict)
    assert (conflict.expected_event_id, conflict.actual_event_id) == ("e1", "e2")
    assert (await nc.jetstream().stream_info("ORDERS")).state.messages == 2


async def test_retry_of_a_stored_event_with_precondition_is_a_duplicate(stub: Stub) -> None:
    req = request("o-1", event_id="once", precondition=_pre(expected_last_subject_sequence=0))
    first = await stub.Publish(req)
    retry = await stub.Publish(req)  # e.g. the first answer was lost: safe to retry
    assert retry.duplicate
    assert retry.sequence == first.sequence


async def test_ttl_is_stored_as_nats_ttl_on_a_ttl_stream(
    gateway_config: GatewayConfig, nc: Client
) -> None:
    streams = tuple(dataclasses.replace(s, allow_msg_ttl=True) for s in gateway_config.streams)
    async with (
        serving(dataclasses.replace(gateway_config, streams=streams)) as gateway,
        grpc.aio.insecure_channel(gateway.address) as channel,
    ):
        req = request("t-1")
        req.event.ttl.FromSeconds(60)
        reply = await gateway_pb2_grpc.EventGatewayStub(channel).Publish(req)
    stored = await nc.jetstream().get_last_msg("ORDERS", reply.subject)
    assert (stored.headers or {})["Nats-TTL"] == "60"
