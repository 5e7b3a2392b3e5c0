"""Fuzzing every request message of jetgate.v1.EventGateway against a live gateway.

Each example sends drawn requests (tests/fuzz/strategies.py) and checks every property of
tests/fuzz/oracle.py: no UNKNOWN/INTERNAL (or any code a healthy gateway has no reason to
give), a refusal stores nothing, an OK is stored exactly as sent and reaches a worker as
sent, the gateway stays SERVING.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc
from google.protobuf.message import DecodeError
from hypothesis import event, given
from hypothesis import strategies as st

from jetgate.v1 import gateway_pb2
from tests.fuzz import strategies
from tests.fuzz.live import MAX_BATCH_ENTRIES, LiveGateway
from tests.fuzz.oracle import (
    Answer,
    Exchange,
    check_example,
    from_error,
    from_result,
)
from tests.fuzz.strategies import Shown, shown


async def publish(live: LiveGateway, request: gateway_pb2.PublishRequest) -> list[str]:
    await live.ensure_serving()
    before = await live.last_sequence()
    try:
        reply = await live.stub.Publish(request, timeout=30)
        answer = Answer(code=grpc.StatusCode.OK, ok=reply)
    except grpc.aio.AioRpcError as error:
        answer = from_error(error)
    return await check_example(live, [Exchange(entries=[request], answers=[answer])], before=before)


def batch_answers(
    batch: gateway_pb2.PublishBatchRequest, reply: gateway_pb2.PublishBatchResponse
) -> list[Answer]:
    assert len(reply.results) == len(batch.entries), "one result per entry"
    return [from_result(result) for result in reply.results]


async def publish_batch(live: LiveGateway, batch: gateway_pb2.PublishBatchRequest) -> list[str]:
    await live.ensure_serving()
    before = await live.last_sequence()
    refused: grpc.aio.AioRpcError | None = None
    try:
        answers = batch_answers(batch, await live.stub.PublishBatch(batch, timeout=30))
    except grpc.aio.AioRpcError as error:
        # The whole request refused (its shape): the same answer for every entry.
        answers = [from_error(error)] * len(batch.entries)
        refused = error
    if refused is not None:
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, refused
        assert not 1 <= len(batch.entries) <= MAX_BATCH_ENTRIES, refused
    exchange = Exchange(entries=batch.entries, answers=answers, atomic=batch.atomic)
    return await check_example(live, [exchange], before=before)


async def publish_stream(
    live: LiveGateway, batches: Sequence[gateway_pb2.PublishBatchRequest]
) -> list[str]:
    await live.ensure_serving()
    before = await live.last_sequence()

    async def sent() -> AsyncIterator[gateway_pb2.PublishBatchRequest]:
        for batch in batches:
            yield batch

    replies = [reply async for reply in live.stub.PublishStream(sent(), timeout=60)]
    assert len(replies) == len(batches), "one response per request message"
    exchanges = [
        Exchange(entries=batch.entries, answers=batch_answers(batch, reply), atomic=batch.atomic)
        for batch, reply in zip(batches, replies, strict=True)
    ]
    return await check_example(live, exchanges, before=before)


async def publish_raw(live: LiveGateway, method: str, data: bytes) -> list[str]:
    """Send request bytes as they are. Bytes that do not parse as the request message (as
    this process's protobuf parses them: invalid UTF-8 in a string field too) are
    INVALID_ARGUMENT and store nothing; bytes that parse are held to every property of the
    request they are (a corrupted request may well carry a precondition that fails)."""
    await live.ensure_serving()
    before = await live.last_sequence()
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = live.channel.unary_unary(
        f"/jetgate.v1.EventGateway/{method}"
    )
    kind = gateway_pb2.PublishRequest if method == "Publish" else gateway_pb2.PublishBatchRequest
    try:
        parsed: gateway_pb2.PublishRequest | gateway_pb2.PublishBatchRequest | None
        parsed = kind.FromString(data)
    except DecodeError:
        parsed = None
    try:
        reply = await call(data, timeout=30)
    except grpc.aio.AioRpcError as error:
        answer = from_error(error)
        reply = None
    code = grpc.StatusCode.OK if reply is not None else answer.code
    if parsed is None:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, f"unparseable bytes: {code.name}"
        await check_example(live, [], before=before)
        return [f"{method}: unparseable {code.name}"]
    if isinstance(parsed, gateway_pb2.PublishRequest):
        if reply is not None:
            answer = Answer(code=code, ok=gateway_pb2.PublishResponse.FromString(reply))
        exchange = Exchange(entries=[parsed], answers=[answer])
    elif reply is not None:
        answers = batch_answers(parsed, gateway_pb2.PublishBatchResponse.FromString(reply))
        exchange = Exchange(entries=parsed.entries, answers=answers, atomic=parsed.atomic)
    else:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, answer
        assert not 1 <= len(parsed.entries) <= MAX_BATCH_ENTRIES, answer
        exchange = Exchange(
            entries=parsed.entries, answers=[answer] * len(parsed.entries), atomic=parsed.atomic
        )
    labels = await check_example(live, [exchange], before=before)
    return [f"{method}: parsed {code.name}", *labels]


def report(labels: list[str]) -> None:
    for label in labels:
        event(label)


@given(request=shown(strategies.requests()))
def test_publish(live: LiveGateway, request: Shown[gateway_pb2.PublishRequest]) -> None:
    report(live.call(publish(live, request.message)))


@given(batch=shown(strategies.batches()))
def test_publish_batch(live: LiveGateway, batch: Shown[gateway_pb2.PublishBatchRequest]) -> None:
    report(live.call(publish_batch(live, batch.message)))


def publish_each_or_batch(
    live: LiveGateway, batch: gateway_pb2.PublishBatchRequest, single: bool
) -> None:
    if single:
        for entry in batch.entries:
            report(live.call(publish(live, entry)))
    else:
        report(live.call(publish_batch(live, batch)))


@given(batch=shown(strategies.near_limits("payload")), single=st.booleans())
def test_events_near_max_payload(
    live: LiveGateway, batch: Shown[gateway_pb2.PublishBatchRequest], single: bool
) -> None:
    """Valid events, one within a few hundred bytes of max_payload: as one Publish each
    or as a batch (atomic or not)."""
    publish_each_or_batch(live, batch.message, single)


@given(batch=shown(strategies.near_limits("headers")), single=st.booleans())
def test_headers_near_the_jetstream_limit(
    live: LiveGateway, batch: Shown[gateway_pb2.PublishBatchRequest], single: bool
) -> None:
    """Valid events, one with about 52-70 KB of headers (JetStream refuses over 64 KiB)."""
    publish_each_or_batch(live, batch.message, single)


# Whole-request refusals (entry counts) end the stream: the PublishBatch test has those.
well_formed = strategies.batches().filter(lambda b: 1 <= len(b.entries) <= MAX_BATCH_ENTRIES)


@given(batches=st.lists(shown(well_formed), min_size=1, max_size=4))
def test_publish_stream(
    live: LiveGateway, batches: list[Shown[gateway_pb2.PublishBatchRequest]]
) -> None:
    report(live.call(publish_stream(live, [batch.message for batch in batches])))


@given(data=strategies.raw_requests(), method=st.sampled_from(["Publish", "PublishBatch"]))
def test_malformed_request_bytes(live: LiveGateway, data: bytes, method: str) -> None:
    report(live.call(publish_raw(live, method, data)))
