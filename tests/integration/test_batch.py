"""PublishBatch (partial failure, atomic all-or-nothing) and PublishStream (order, volume)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from nats.aio.client import Client

from jetgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import detail, field_violations, request

Stub = gateway_pb2_grpc.EventGatewayStub


async def _count(nc: Client) -> int:
    return int((await nc.jetstream().stream_info("ORDERS")).state.messages)


async def test_batch_reports_partial_failure_per_entry_in_order(stub: Stub, nc: Client) -> None:
    entries = [
        request("o-1"),
        request("bad key"),
        request("o-3", event_id="dup"),
        request("o-3", event_id="dup"),
    ]
    reply = await stub.PublishBatch(gateway_pb2.PublishBatchRequest(entries=entries))
    kinds = [r.WhichOneof("result") for r in reply.results]
    assert kinds == ["ok", "error", "ok", "ok"]
    assert reply.results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "entries[1].event.key" in field_violations(reply.results[1].error)
    assert [r.ok.subject for r in reply.results if r.HasField("ok")] == [
        "orders.OrderPlaced.o-1",
        "orders.OrderPlaced.o-3",
        "orders.OrderPlaced.o-3",
    ]
    assert reply.results[3].ok.duplicate
    assert reply.results[3].ok.sequence == reply.results[2].ok.sequence
    assert await _count(nc) == 2


async def test_atomic_batch_stores_all_with_consecutive_sequences(stub: Stub, nc: Client) -> None:
    await stub.Publish(request("before"))
    entries = [request(f"o-{i}") for i in range(50)]
    reply = await stub.PublishBatch(gateway_pb2.PublishBatchRequest(entries=entries, atomic=True))
    assert [r.ok.sequence for r in reply.results] == list(range(2, 52))
    assert [r.ok.subject for r in reply.results] == [f"orders.OrderPlaced.o-{i}" for i in range(50)]
    assert await _count(nc) == 51
    stored = await nc.jetstream().get_msg("ORDERS", 30)
    assert stored.subject == "orders.OrderPlaced.o-28"
    assert (stored.headers or {})["ce-id"] == reply.results[28].ok.event_id


async def test_atomic_batch_with_one_bad_entry_stores_nothing(stub: Stub, nc: Client) -> None:
    entries = [request("o-1"), request("o.2"), request("o-3")]
    reply = await stub.PublishBatch(gateway_pb2.PublishBatchRequest(entries=entries, atomic=True))
    codes = [grpc.StatusCode(_code(r.error.code)) for r in reply.results]
    assert codes == [
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ABORTED,
    ]
    assert "entries[1]" in reply.results[0].error.message
    assert await _count(nc) == 0


async def test_atomic_batch_with_violated_precondition_stores_nothing(
    stub: Stub, nc: Client
) -> None:
    await stub.Publish(request("o-1"))
    stale = event_pb2.Precondition(expected_last_subject_sequence=0)
    entries = [request("o-2"), request("o-1", precondition=stale), request("o-3")]
    reply = await stub.PublishBatch(gateway_pb2.PublishBatchRequest(entries=entries, atomic=True))
    assert all(r.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0] for r in reply.results)
    assert detail(reply.results[0].error, event_pb2.SequenceConflict).condition == (
        "expected_last_subject_sequence"
    )
    assert await _count(nc) == 1


def _code(value: int) -> tuple[int, str]:
    return next(c.value for c in grpc.StatusCode if c.value[0] == value)


async def _requests(batches: int, size: int) -> AsyncIterator[gateway_pb2.PublishBatchRequest]:
    for b in range(batches):
        yield gateway_pb2.PublishBatchRequest(
            entries=[request(f"k{b}-{i}", event_id=f"e{b}-{i}") for i in range(size)]
        )


async def test_publish_stream_keeps_order_over_thousands_of_events(stub: Stub, nc: Client) -> None:
    responses = [r async for r in stub.PublishStream(_requests(batches=60, size=100))]
    assert len(responses) == 60
    ids = [res.ok.event_id for r in responses for res in r.results]
    assert ids == [f"e{b}-{i}" for b in range(60) for i in range(100)]
    sequences = [res.ok.sequence for r in responses for res in r.results]
    assert sorted(set(sequences)) == list(range(1, 6001))
    assert await _count(nc) == 6000


async def test_publish_stream_reports_bad_entries_and_goes_on(stub: Stub, nc: Client) -> None:
    async def requests() -> AsyncIterator[gateway_pb2.PublishBatchRequest]:
        yield gateway_pb2.PublishBatchRequest(entries=[request("a"), request("b c")])
        yield gateway_pb2.PublishBatchRequest(entries=[request("d")], atomic=True)

    responses = [r async for r in stub.PublishStream(requests())]
    assert [[x.WhichOneof("result") for x in r.results] for r in responses] == [
        ["ok", "error"],
        ["ok"],
    ]
    assert await _count(nc) == 2


async def test_publish_stream_aborts_on_an_oversized_request(stub: Stub, nc: Client) -> None:
    async def requests() -> AsyncIterator[gateway_pb2.PublishBatchRequest]:
        yield gateway_pb2.PublishBatchRequest(entries=[request("a")])
        yield gateway_pb2.PublishBatchRequest(entries=[request(f"x{i}") for i in range(1001)])

    call = stub.PublishStream(requests())
    first = await call.read()
    assert isinstance(first, gateway_pb2.PublishBatchResponse)
    assert first.results[0].ok.sequence == 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await _count(nc) == 1
