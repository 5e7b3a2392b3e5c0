"""Read against a real gateway and nats-server: key history, replay, starts, limit, follow."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import any_pb2, timestamp_pb2
from nats.aio.client import Client

from gateway.embedded import NatsServer
from gateway.ordered_pull import PULL_BATCH
from gateway.server import Gateway
from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import field_violations, order_placed, request, rich_status
from tests.support.eventually import eventually

PLACED = "jetgate.examples.orders.v1.OrderPlaced"
if TYPE_CHECKING:
    Stub = gateway_pb2_grpc.EventGatewayAsyncStub  # only in the stubs' .pyi


def by_key(key: str, **options: object) -> gateway_pb2.ReadRequest:
    return gateway_pb2.ReadRequest(
        key=gateway_pb2.KeySelector(event_type=PLACED, key=key),
        **options,  # type: ignore[arg-type]
    )


def by_subjects(
    *filters: str, stream: str = "ORDERS", **options: object
) -> gateway_pb2.ReadRequest:
    return gateway_pb2.ReadRequest(
        subjects=gateway_pb2.SubjectSelector(stream=stream, filter_subjects=list(filters)),
        **options,  # type: ignore[arg-type]
    )


async def read_all(
    stub: Stub, read: gateway_pb2.ReadRequest
) -> tuple[list[gateway_pb2.StoredEvent], list[gateway_pb2.CaughtUp]]:
    """Every event and CaughtUp of a read that ends by itself, in order of arrival."""
    events: list[gateway_pb2.StoredEvent] = []
    markers: list[gateway_pb2.CaughtUp] = []
    async for response in stub.Read(read, timeout=30):
        if response.HasField("event") or response.HasField("events"):
            assert not markers, "an event after CaughtUp in a read without follow"
            if response.HasField("event"):
                events.append(response.event)
            else:
                assert 1 <= len(response.events.events) <= max(1, read.max_events_per_response)
                events.extend(response.events.events)
        else:
            markers.append(response.caught_up)
    return events, markers


def paid(order_id: str, payment: str) -> orders_pb2.OrderPaid:
    return orders_pb2.OrderPaid(order_id=order_id, payment_id=payment, method="card")


async def publish(stub: Stub, key: str, message: object, **options: object) -> int:
    response = await stub.Publish(request(key, message=message, **options))  # type: ignore[arg-type]
    return int(response.sequence)


async def test_key_history_in_stream_order_with_every_field(stub: Stub) -> None:
    placed = await publish(stub, "o-1", order_placed("o-1"), headers={"tenant": "t-1"})
    other = await publish(stub, "o-2", order_placed("o-2"))
    payment = await publish(stub, "o-1", paid("o-1", "p-1"), event_id="pay-o-1")

    events, markers = await read_all(stub, by_key("o-1"))

    assert [e.event.sequence for e in events] == [placed, payment]
    assert other not in [e.event.sequence for e in events]
    assert [list(m.ListFields()) for m in markers] == [
        list(gateway_pb2.CaughtUp(last_sequence=payment, count=2).ListFields())
    ]
    first, second = events
    assert first.event.payload.type_url == wire.type_url(PLACED)
    assert orders_pb2.OrderPlaced.FromString(first.event.payload.value) == order_placed("o-1")
    assert first.event.headers == {"tenant": "t-1"}
    assert first.event.key == "o-1"
    assert first.event.subject == "orders.OrderPlaced.o-1"
    assert first.event.stream == "ORDERS"
    assert first.event.source == "jetgate"
    assert first.event.id
    assert first.event.time.seconds > 0
    assert first.stored_time.ToNanoseconds() >= first.event.time.ToNanoseconds() - 10**9
    unpacked = orders_pb2.OrderPaid()
    assert second.event.payload.Unpack(unpacked)
    assert unpacked == paid("o-1", "p-1")
    assert second.event.id == "pay-o-1"
    assert second.event.subject == "orders.OrderPaid.o-1"


async def test_a_key_without_events_is_caught_up_at_once(stub: Stub) -> None:
    await publish(stub, "o-1", order_placed("o-1"))
    events, markers = await read_all(stub, by_key("o-nothing"))
    assert events == []
    assert [(m.last_sequence, m.count) for m in markers] == [(0, 0)]


async def test_subject_replay_of_a_filter_and_of_the_whole_stream(stub: Stub) -> None:
    sequences = []
    for index in range(5):
        sequences.append(await publish(stub, f"o-{index}", order_placed(f"o-{index}")))
        sequences.append(await publish(stub, f"o-{index}", paid(f"o-{index}", f"p-{index}")))

    payments, _ = await read_all(stub, by_subjects("orders.OrderPaid.>"))
    assert [e.event.sequence for e in payments] == sequences[1::2]
    assert {e.event.subject for e in payments} == {f"orders.OrderPaid.o-{i}" for i in range(5)}

    two, _ = await read_all(stub, by_subjects("orders.*.o-1", "orders.OrderPlaced.o-3"))
    assert [e.event.sequence for e in two] == sorted([sequences[2], sequences[3], sequences[6]])

    everything, markers = await read_all(stub, by_subjects())
    assert [e.event.sequence for e in everything] == sequences
    assert [(m.last_sequence, m.count) for m in markers] == [(sequences[-1], 10)]


async def test_from_sequence_from_time_last_and_limit(stub: Stub) -> None:
    sequences = [await publish(stub, "o-7", paid("o-7", f"p-{i}")) for i in range(6)]
    await publish(stub, "o-8", paid("o-8", "p-x"))  # another key in between
    sequences.append(await publish(stub, "o-7", paid("o-7", "p-6")))

    def seqs(events: Sequence[gateway_pb2.StoredEvent]) -> list[int]:
        return [e.event.sequence for e in events]

    events, _ = await read_all(stub, by_key("o-7", from_sequence=sequences[3]))
    assert seqs(events) == sequences[3:]
    events, _ = await read_all(stub, by_key("o-7", from_sequence=sequences[3] + 1))
    assert seqs(events) == sequences[4:]

    events, markers = await read_all(stub, by_key("o-7", last=3))
    assert seqs(events) == sequences[-3:]
    assert [(m.last_sequence, m.count) for m in markers] == [(sequences[-1], 3)]
    events, _ = await read_all(stub, by_key("o-7", last=100))
    assert seqs(events) == sequences
    events, _ = await read_all(stub, by_subjects("orders.OrderPaid.o-8", last=1))
    assert len(events) == 1
    assert events[0].event.key == "o-8"

    # A limit that stops the read early ends it without CaughtUp (more is stored)...
    events, markers = await read_all(stub, by_key("o-7", limit=2))
    assert seqs(events) == sequences[:2]
    assert markers == []
    # ...one that ends exactly at the last stored event still says so.
    events, markers = await read_all(stub, by_key("o-7", limit=len(sequences)))
    assert seqs(events) == sequences
    assert len(markers) == 1
    events, _ = await read_all(stub, by_key("o-7", last=4, limit=2))
    assert seqs(events) == sequences[-4:-2]

    all_events, _ = await read_all(stub, by_key("o-7"))
    stored = [e.stored_time for e in all_events]
    moment = timestamp_pb2.Timestamp()
    moment.FromNanoseconds(stored[4].ToNanoseconds())
    events, _ = await read_all(stub, by_key("o-7", from_time=moment))
    assert seqs(events) == sequences[4:]
    future = timestamp_pb2.Timestamp(seconds=stored[-1].seconds + 3600)
    events, markers = await read_all(stub, by_key("o-7", from_time=future))
    assert events == []
    assert [(m.last_sequence, m.count) for m in markers] == [(0, 0)]


async def test_follow_sends_caught_up_then_new_events(stub: Stub, gateway: Gateway) -> None:
    first = await publish(stub, "o-9", order_placed("o-9"))
    call = stub.Read(by_key("o-9", follow=True))
    stream = aiter(call)
    response = await anext(stream)
    assert response.event.event.sequence == first
    response = await anext(stream)
    assert (response.caught_up.last_sequence, response.caught_up.count) == (first, 1)

    await publish(stub, "o-other", order_placed("o-other"))
    later = await publish(stub, "o-9", paid("o-9", "p-9"))
    response = await asyncio.wait_for(anext(stream), 30)
    assert response.event.event.sequence == later
    assert response.event.event.subject == "orders.OrderPaid.o-9"
    js = gateway.nats.jetstream()

    async def ephemeral_consumers() -> int:  # the config may declare durable groups' too
        return sum(not c.config.durable_name for c in await js.consumers_info("ORDERS"))

    assert await ephemeral_consumers() == 1
    call.cancel()

    async def consumer_deleted() -> bool:
        return await ephemeral_consumers() == 0

    await eventually(consumer_deleted, what="the cancelled read's consumer deleted")


async def test_follow_with_limit_ends_after_the_limit(stub: Stub) -> None:
    call = stub.Read(by_key("o-10", follow=True, limit=2))
    stream = aiter(call)
    response = await anext(stream)
    assert response.caught_up.count == 0
    one = await publish(stub, "o-10", order_placed("o-10"))
    two = await publish(stub, "o-10", paid("o-10", "p"))
    await publish(stub, "o-10", paid("o-10", "p-again"))
    rest = [r async for r in stream]
    assert [r.event.event.sequence for r in rest] == [one, two]


async def test_a_message_that_is_not_a_jetgate_event_is_returned(
    stub: Stub, gateway: Gateway
) -> None:
    nc: Client = gateway.nats
    ack = await nc.jetstream().publish(
        "orders.Legacy.o-11", b"raw", headers={"x-origin": "legacy", "ce-partition": "7"}
    )
    events, _ = await read_all(stub, by_subjects("orders.Legacy.>"))
    (event,) = events
    assert event.event.sequence == ack.seq
    assert event.event.payload == any_pb2.Any(value=b"raw")
    assert event.event.key == "o-11"
    assert event.event.headers == {"x-origin": "legacy"}
    assert dict(event.extensions) == {"partition": "7"}
    assert event.stored_time.seconds > 0


@pytest.mark.parametrize(
    ("read", "code", "field"),
    [
        (gateway_pb2.ReadRequest(), grpc.StatusCode.INVALID_ARGUMENT, "selector"),
        (by_key("o.1"), grpc.StatusCode.INVALID_ARGUMENT, "key.key"),
        (by_key(""), grpc.StatusCode.INVALID_ARGUMENT, "key.key"),
        (
            gateway_pb2.ReadRequest(key=gateway_pb2.KeySelector(key="o-1")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "key.event_type",
        ),
        (by_subjects("other.>"), grpc.StatusCode.INVALID_ARGUMENT, "subjects.filter_subjects[0]"),
        (
            by_subjects("orders.>", "orders..x"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "subjects.filter_subjects[1]",
        ),
        (
            by_subjects("orders.> x"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "subjects.filter_subjects[0]",
        ),
        (by_subjects(stream=""), grpc.StatusCode.INVALID_ARGUMENT, "subjects.stream"),
        (by_key("o-1", last=0), grpc.StatusCode.INVALID_ARGUMENT, "last"),
        (
            by_subjects("orders.>", "orders.OrderPlaced.*"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "subjects.filter_subjects",
        ),
        (
            gateway_pb2.ReadRequest(
                key=gateway_pb2.KeySelector(event_type="acme.v1.Unknown", key="k")
            ),
            grpc.StatusCode.NOT_FOUND,
            "",
        ),
        (by_subjects(stream="NOPE"), grpc.StatusCode.NOT_FOUND, ""),
    ],
)
async def test_bad_reads_fail_precisely(
    stub: Stub, read: gateway_pb2.ReadRequest, code: grpc.StatusCode, field: str
) -> None:
    await publish(stub, "o-1", order_placed("o-1"))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await read_all(stub, read)
    assert failure.value.code() == code, failure.value.details()
    if field:
        assert field in field_violations(rich_status(failure.value))


async def test_event_types_may_be_given_as_type_urls(stub: Stub) -> None:
    sequence = await publish(stub, "o-12", order_placed("o-12"))
    read = gateway_pb2.ReadRequest(
        key=gateway_pb2.KeySelector(event_type=wire.data_schema(PLACED), key="o-12")
    )
    events, _ = await read_all(stub, read)
    assert [e.event.sequence for e in events] == [sequence]


async def test_nats_unreachable_is_unavailable(stub: Stub, nats_server: NatsServer) -> None:
    await publish(stub, "o-13", order_placed("o-13"))
    nats_server.stop()
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await read_all(stub, by_key("o-13"))
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE, failure.value.details()


async def test_a_history_longer_than_one_pull_comes_whole_then_caught_up(
    stub: Stub, gateway: Gateway
) -> None:
    # More than one pull's batch (ordered_pull.PULL_BATCH): a pull that ends with its batch
    # complete must not be taken for "nothing left".
    js = gateway.nats.jetstream()
    count = 2 * PULL_BATCH + 7
    acks = [
        await js.publish_async(
            "orders.OrderPaid.o-long",
            paid("o-long", f"p-{i}").SerializeToString(),
            headers={"x-pad": "x" * 600},
        )
        for i in range(count)
    ]
    sequences = [ack.seq for ack in await asyncio.gather(*acks)]

    events, markers = await read_all(stub, by_subjects())

    assert [e.event.sequence for e in events] == sequences
    assert [(m.last_sequence, m.count) for m in markers] == [(sequences[-1], count)]


async def test_several_events_per_response(stub: Stub) -> None:
    sequences = [await publish(stub, "o-14", paid("o-14", f"p-{i}")) for i in range(10)]
    kinds = []
    async for response in stub.Read(by_key("o-14", max_events_per_response=4), timeout=30):
        kinds.append(response.WhichOneof("item"))
    assert "event" not in kinds
    assert kinds[-1] == "caught_up"

    events, markers = await read_all(stub, by_key("o-14", max_events_per_response=4))
    assert [e.event.sequence for e in events] == sequences
    assert events[0].event.subject == "orders.OrderPaid.o-14"
    assert [(m.last_sequence, m.count) for m in markers] == [(sequences[-1], 10)]
    events, _ = await read_all(stub, by_key("o-14", max_events_per_response=100, limit=3))
    assert [e.event.sequence for e in events] == sequences[:3]

    call = stub.Read(by_key("o-14", follow=True, last=2, max_events_per_response=50))
    stream = aiter(call)
    received: list[int] = []
    while len(received) < 2:
        response = await anext(stream)
        received += [e.event.sequence for e in response.events.events]
    assert received == sequences[-2:]
    assert (await anext(stream)).caught_up.count == 2
    later = await publish(stub, "o-14", paid("o-14", "p-later"))
    response = await asyncio.wait_for(anext(stream), 30)
    assert [e.event.sequence for e in response.events.events] == [later]
    call.cancel()


async def test_follow_goes_on_after_its_consumer_is_deleted(stub: Stub, gateway: Gateway) -> None:
    first = await publish(stub, "o-15", order_placed("o-15"))
    call = stub.Read(by_key("o-15", follow=True))
    stream = aiter(call)
    assert (await anext(stream)).event.event.sequence == first
    assert (await anext(stream)).caught_up.count == 1
    js = gateway.nats.jetstream()
    [consumer] = [c for c in await js.consumers_info("ORDERS") if not c.config.durable_name]

    await js.delete_consumer("ORDERS", consumer.name)
    later = await publish(stub, "o-15", paid("o-15", "p-15"))

    # Resumed after the last event sent: the new one, nothing twice.
    response = await asyncio.wait_for(anext(stream), 30)
    assert response.event.event.sequence == later
    call.cancel()
