"""Precise status codes where nothing was stored: issue 18, defect 7.

Storage full is RESOURCE_EXHAUSTED (not a retryable UNAVAILABLE); an atomic batch that can
never be stored as written is INVALID_ARGUMENT naming its entries (not ALREADY_EXISTS or a
FAILED_PRECONDITION without an actual value); a refused atomic precondition describes the
entry that failed with its actual sequence; `source` follows the header value rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from nats.aio.client import Client

from gateway.config import GatewayConfig
from gateway.embedded import NatsServer
from jetgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import (
    detail,
    field_violations,
    order_placed,
    request,
    rich_status,
    serving,
)

Stub = gateway_pb2_grpc.EventGatewayStub
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
ABORTED = grpc.StatusCode.ABORTED.value[0]
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]


async def _count(nc: Client) -> int:
    return int((await nc.jetstream().stream_info("ORDERS")).state.messages)


def _atomic(*entries: gateway_pb2.PublishRequest) -> gateway_pb2.PublishBatchRequest:
    return gateway_pb2.PublishBatchRequest(entries=entries, atomic=True)


def _expecting(key: str, **condition: int | str) -> gateway_pb2.PublishRequest:
    return request(key, precondition=event_pb2.Precondition(**condition))  # type: ignore[arg-type]


@pytest.fixture
def small_store(tmp_path: Path) -> Iterator[NatsServer]:
    # JetStream may store at most 1 MB on disk (`max_file_store`).
    server = NatsServer(tmp_path / "small", config="jetstream {\n  max_file_store: 1MB\n}\n")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_storage_full_is_resource_exhausted(
    gateway_config: GatewayConfig, small_store: NatsServer
) -> None:
    config = dataclasses.replace(gateway_config, nats_url=small_store.url)
    async with serving(config) as gateway, grpc.aio.insecure_channel(gateway.address) as channel:
        stub = gateway_pb2_grpc.EventGatewayStub(channel)
        stored = 0
        failure = None
        for i in range(40):  # 40 x 100 KB: well over the 1 MB store
            req = request(f"o-{i}")
            req.event.payload.value = order_placed().SerializeToString() + (
                b"\x7a\xa0\x8d\x06" + b"x" * 100_000  # unknown field 15, 100000 bytes
            )
            try:
                await stub.Publish(req)
            except grpc.aio.AioRpcError as exc:
                failure = exc
                break
            stored += 1
    assert failure is not None
    assert failure.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, failure
    assert "retry with the same event id" not in (failure.details() or "")
    assert 0 < stored < 40


async def test_atomic_batch_with_one_id_twice_is_invalid_argument_naming_both(
    stub: Stub, nc: Client
) -> None:
    reply = await stub.PublishBatch(
        _atomic(request("o-1", event_id="same"), request("o-2"), request("o-3", event_id="same"))
    )
    codes = [r.error.code for r in reply.results]
    assert codes == [INVALID_ARGUMENT, ABORTED, INVALID_ARGUMENT]
    for index in (0, 2):
        violations = field_violations(reply.results[index].error)
        why = violations[f"entries[{index}].event.id"]
        assert "entries[0]" in why, why
        assert "entries[2]" in why, why
    assert await _count(nc) == 0


async def test_atomic_batch_expecting_a_subject_it_writes_is_invalid_argument(
    stub: Stub, nc: Client
) -> None:
    reply = await stub.PublishBatch(
        _atomic(
            _expecting("o-1", expected_last_subject_sequence=0),
            _expecting("o-1", expected_last_subject_sequence=0),
        )
    )
    assert [r.error.code for r in reply.results] == [ABORTED, INVALID_ARGUMENT]
    why = field_violations(reply.results[1].error)[
        "entries[1].precondition.expected_last_subject_sequence"
    ]
    assert "entries[0]" in why, why
    assert "before the batch" in why, why
    assert await _count(nc) == 0


async def test_atomic_batch_with_unsupported_preconditions_is_invalid_argument(
    stub: Stub, nc: Client
) -> None:
    reply = await stub.PublishBatch(
        _atomic(
            request("o-1"),
            _expecting("o-2", expected_last_sequence=0),
            _expecting("o-3", expected_last_event_id="e-1"),
        )
    )
    assert [r.error.code for r in reply.results] == [ABORTED, INVALID_ARGUMENT, INVALID_ARGUMENT]
    assert "entries[1].precondition.expected_last_sequence" in field_violations(
        reply.results[1].error
    )
    assert "entries[2].precondition.expected_last_event_id" in field_violations(
        reply.results[2].error
    )
    assert await _count(nc) == 0


async def test_refused_atomic_precondition_names_the_failing_entry_and_actual(
    stub: Stub, nc: Client
) -> None:
    await stub.Publish(request("o-1"))
    await stub.Publish(request("o-1"))
    reply = await stub.PublishBatch(
        _atomic(
            _expecting("o-2", expected_last_subject_sequence=0),  # holds
            _expecting("o-1", expected_last_subject_sequence=1),  # stale: o-1 is at 2
        )
    )
    assert [r.error.code for r in reply.results] == [FAILED_PRECONDITION] * 2
    conflict = detail(reply.results[0].error, event_pb2.SequenceConflict)
    assert conflict.condition == "expected_last_subject_sequence"
    assert conflict.subject == "orders.OrderPlaced.o-1"
    assert (conflict.expected_sequence, conflict.actual_sequence) == (1, 2)
    assert await _count(nc) == 2


@pytest.mark.parametrize("source", ["src ", " src", "src\t"])
async def test_source_with_surrounding_whitespace_is_refused_like_a_header_value(
    source: str, stub: Stub, nc: Client
) -> None:
    req = request("o-1")
    req.event.source = source
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Publish(req)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "whitespace" in field_violations(rich_status(caught.value))["event.source"]
    assert await _count(nc) == 0
