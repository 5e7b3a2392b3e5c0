"""Dead letters of events near nats-server's max_payload, and workers whose connection the
server closed (issue 18, defect 2 and the worker half of defect 1).

The dead-letter copy adds `Jetgate-*` headers; an event near the limit plus those was over
max_payload, nats-server closed the worker's connection, and nats-py does not reconnect
after that: the worker logged "pull request failed: ConnectionClosedError()" forever.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import nats
import pytest
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from consumers import Delivery, Reject, Worker, deadletter
from consumers.deadletter import DeadLetter
from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2
from tests.consumers.conftest import STREAM, group, running, store
from tests.support.eventually import eventually

ORDER_PLACED = orders_pb2.OrderPlaced.DESCRIPTOR.full_name
RAW_SIZE = 1_048_512  # the raw message of the report: 64 bytes under the default limit


async def store_sized(js: JetStreamContext, key: str, total: int) -> tuple[int, bytes]:
    """Store an OrderPlaced of `key` whose headers and payload take `total` bytes."""
    envelope = wire.Envelope(
        id=wire.new_event_id(),
        type=ORDER_PLACED,
        source="tests",
        key=key,
        time=datetime.now(UTC),
        headers={"tenant": "t-1"},
    )
    headers = wire.encode_headers(envelope)
    room = total - wire.encoded_headers_size(headers)
    filler = room
    while True:  # the varint length prefix makes the size step; find the exact one
        payload = orders_pb2.OrderPlaced(order_id=key, customer_id="c" * filler)
        size = payload.ByteSize()
        if size == room:
            break
        filler -= max(1, size - room)
    data = payload.SerializeToString()
    ack = await js.publish(wire.subject("orders", ORDER_PLACED, key), data, headers=headers)
    return int(ack.seq), data


def reject_big(handled: list[str]) -> Callable[..., Awaitable[None]]:
    async def handle(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        if event.order_id.startswith("big"):
            raise Reject("too big to handle")
        handled.append(event.order_id)

    return handle


@pytest.mark.parametrize("kind", ["order-16-bytes-under", "raw-1048512-bytes"])
async def test_an_event_near_max_payload_is_dead_lettered_truncated_and_the_worker_goes_on(
    nc: Client, js: JetStreamContext, kind: str
) -> None:
    limit = nc.max_payload
    if kind == "raw-1048512-bytes":
        assert limit == 1_048_576
        data = b"\x01" * RAW_SIZE
        sequence = int((await js.publish("orders.OrderPlaced.big-raw", data)).seq)
        subject = "orders.OrderPlaced.big-raw"
    else:
        sequence, data = await store_sized(js, "big-1", limit - 16)
        subject = wire.subject("orders", ORDER_PLACED, "big-1")
    billing = group()
    handled: list[str] = []
    billing.handler(orders_pb2.OrderPlaced)(reject_big(handled))

    worker = Worker(billing, nc)
    async with running(worker):
        await eventually(lambda: worker.stats.dead_lettered == 1)
        await store(js, "o-next")
        await eventually(lambda: handled == ["o-next"])
    assert not nc.is_closed

    [dead] = [d async for d in deadletter.dead_letters(js, "billing")]
    assert (dead.origin_stream, dead.origin_sequence, dead.origin_subject) == (
        STREAM,
        sequence,
        subject,
    )
    assert dead.truncated
    assert dead.original_size == len(data)
    assert 0 < len(dead.payload) < len(data)
    assert data.startswith(dead.payload)
    assert dead.headers[wire.DEAD_TRUNCATED] == str(len(data))
    assert wire.encoded_headers_size(dead.headers) + len(dead.payload) <= limit
    assert dead.reason == ("reject" if kind.startswith("order") else "undecodable")
    info = await js.consumer_info(STREAM, "billing")
    assert (info.num_ack_pending, info.num_pending) == (0, 0)

    # Republished with its redrive headers it would be over the limit again: refused, kept.
    refusals: list[tuple[DeadLetter, str]] = []
    redriven = await deadletter.redrive(
        js, "billing", max_payload=limit, refused=lambda d, why: refusals.append((d, why))
    )
    assert redriven == []
    [(refused, why)] = refusals
    assert refused.sequence == dead.sequence
    assert "max_payload" in why
    assert len([d async for d in deadletter.dead_letters(js, "billing")]) == 1


async def test_a_truncated_dead_letter_is_redriven_from_its_original_or_refused(
    nc: Client, js: JetStreamContext
) -> None:
    limit = nc.max_payload
    first, data = await store_sized(js, "big-1", limit - 100)
    second, _ = await store_sized(js, "big-2", limit - 100)
    billing = group()
    handled: list[str] = []
    billing.handler(orders_pb2.OrderPlaced)(reject_big(handled))
    worker = Worker(billing, nc)
    async with running(worker):
        await eventually(lambda: worker.stats.dead_lettered == 2)
    dead = {d.origin_sequence: d async for d in deadletter.dead_letters(js, "billing")}
    assert all(d.truncated for d in dead.values())
    await js.delete_msg(STREAM, second)  # the original of the second one is gone

    refusals: list[str] = []
    redriven = await deadletter.redrive(
        js, "billing", max_payload=limit, refused=lambda d, why: refusals.append(why)
    )
    assert [d.origin_sequence for d in redriven] == [first]
    [why] = refusals
    assert f"{STREAM}/{second}" in why
    assert "no longer stored" in why
    [kept] = [d async for d in deadletter.dead_letters(js, "billing")]
    assert kept.origin_sequence == second

    # The redriven event is the whole original: payload and headers as first stored.
    stored = await js.get_last_msg(STREAM, wire.subject("orders", ORDER_PLACED, "big-1"))
    assert stored.seq is not None
    assert stored.seq > first
    assert stored.data == data
    original_id = dead[first].event_id
    assert (stored.headers or {})[wire.CE_ID] == original_id
    assert (stored.headers or {})[wire.REDRIVE_GROUP] == "billing"
    assert wire.DEAD_TRUNCATED not in (stored.headers or {})


def test_a_dead_letter_whose_headers_do_not_fit_keeps_its_cloudevents_headers_or_none() -> None:
    originals = {"ce-id": "e-1", "ce-type": ORDER_PLACED, "huge": "h" * 2000}
    headers = deadletter.dead_letter_headers(
        originals,
        stream=STREAM,
        subject="orders.OrderPlaced.k",
        sequence=7,
        group="billing",
        attempts=1,
        reason="reject",
        error="no",
    )
    limit = wire.encoded_headers_size(headers) - 100
    payload, kept = deadletter.fit(b"p" * 50, headers, max_payload=limit)
    assert wire.encoded_headers_size(kept) + len(payload) <= limit
    assert (kept["ce-id"], kept[wire.DEAD_DROPPED_HEADERS], kept[wire.DEAD_TRUNCATED]) == (
        "e-1",
        "1",
        "50",
    )
    assert "huge" not in kept
    assert kept[wire.ORIGIN_SEQUENCE] == "7"
    whole_payload, whole = deadletter.fit(b"p" * 50, headers, max_payload=10 * limit)
    assert (whole_payload, whole) == (b"p" * 50, headers)


@contextlib.asynccontextmanager
async def connections(
    url: str,
) -> AsyncIterator[tuple[list[Client], Callable[[], Awaitable[Client]]]]:
    made: list[Client] = []

    async def connect() -> Client:
        client = await nats.connect(url)
        made.append(client)
        return client

    try:
        yield made, connect
    finally:
        for client in made:
            with contextlib.suppress(NatsError):
                await client.close()


async def test_a_worker_replaces_a_connection_the_server_closed(
    nats_url: str, js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    billing = group()
    handled: list[str] = []
    billing.handler(orders_pb2.OrderPlaced)(reject_big(handled))
    async with connections(nats_url) as (made, connect):
        first = await connect()
        worker = Worker(billing, first, connect=connect)
        with caplog.at_level(logging.INFO, logger="jetgate.consumers"):
            async with running(worker):
                await store(js, "o-1")
                await eventually(lambda: handled == ["o-1"])
                # A header block over max_payload (nats-py checks only the payload's size):
                # nats-server closes the connection, and nats-py does not reconnect.
                with contextlib.suppress(NatsError):
                    await first.publish("junk", b"", headers={"x": "y" * first.max_payload})
                    await first.flush(timeout=5)
                await eventually(lambda: first.is_closed)
                await store(js, "o-2")
                await eventually(lambda: handled == ["o-1", "o-2"])
        assert len(made) == 2
        assert made[1].is_closed  # the worker closes the connection it made
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "closed the connection" in m]) == 1
    assert len([m for m in messages if "pull request failed" in m]) <= 1
