"""The pipelined publisher against a real nats-server: acks, errors, timeouts, lost links."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from gateway.embedded import NatsServer
from gateway.publisher import (
    OutboundMessage,
    Outcome,
    Publisher,
    PublishFailure,
    Stored,
    parse_ack,
)
from tests.support.eventually import eventually

FAST = 10.0  # s: "fast" is well before the 30 s ack timeout, even on a loaded machine


def _msg(subject: str, msg_id: str = "", **headers: str) -> OutboundMessage:
    if msg_id:
        headers["Nats-Msg-Id"] = msg_id
    return OutboundMessage(subject=subject, payload=b"x" * 16, headers=headers)


async def _publisher(nc: Client, max_pending: int = 64) -> Publisher:
    await nc.jetstream().add_stream(StreamConfig(name="T", subjects=["t.>"], allow_atomic=True))
    publisher = Publisher(nc, max_pending=max_pending)
    await publisher.start()
    return publisher


async def test_outcomes_come_back_in_order_through_a_small_window(nc: Client) -> None:
    publisher = await _publisher(nc, max_pending=8)
    outcomes = await publisher.publish([_msg(f"t.{i}", f"id-{i}") for i in range(500)], within=5)
    assert outcomes == [Stored(stream="T", sequence=i + 1) for i in range(500)]
    assert publisher.pending == 0
    await publisher.close()


async def test_headers_passed_in_are_not_mutated(nc: Client) -> None:
    publisher = await _publisher(nc)
    message = _msg("t.a", "once")
    before = dict(message.headers)
    await publisher.publish([message], within=5)
    await publisher.publish_atomic([message, _msg("t.b", "b")], within=5)
    assert message.headers == before
    await publisher.close()


async def test_jetstream_errors_are_failures_with_their_codes(nc: Client) -> None:
    publisher = await _publisher(nc)
    (outcome,) = await publisher.publish(
        [_msg("t.a", **{"Nats-Expected-Last-Sequence": "5"})], within=5
    )
    assert isinstance(outcome, PublishFailure)
    assert (outcome.kind, outcome.err_code) == ("api", 10071)
    (outcome,) = await publisher.publish([_msg("nostream.a")], within=0.5)
    assert isinstance(outcome, PublishFailure)
    assert outcome.kind == "unavailable"
    await publisher.close()


async def test_no_acknowledgement_is_a_timeout_and_frees_the_window(nc: Client) -> None:
    publisher = await _publisher(nc, max_pending=2)
    silent = await nc.subscribe("quiet.>")  # a listener that never answers: no 503 either
    outcomes = await publisher.publish([_msg("quiet.a"), _msg("quiet.b")], within=0.2)
    assert [o.kind for o in outcomes if isinstance(o, PublishFailure)] == ["timeout", "timeout"]
    # Settled futures release their slot in a done-callback.
    await eventually(lambda: publisher.pending == 0, what="the window freed")
    # The window is free again: the next publishes are not blocked.
    outcomes = await publisher.publish([_msg("t.a"), _msg("t.b")], within=5)
    assert all(isinstance(o, Stored) for o in outcomes)
    await silent.unsubscribe()
    await publisher.close()


async def test_atomic_batch_reports_consecutive_sequences(nc: Client) -> None:
    publisher = await _publisher(nc)
    await publisher.publish([_msg("t.first")], within=5)
    stored = await publisher.publish_atomic([_msg(f"t.{i}") for i in range(10)], within=5)
    assert stored == [Stored(stream="T", sequence=i) for i in range(2, 12)]
    await publisher.close()


async def test_lost_connection_fails_pending_and_new_publishes_fast(
    nats_server: NatsServer, nc: Client
) -> None:
    publisher = await _publisher(nc)
    silent = await nc.subscribe("quiet.>")
    # Retried (a lost link may be a leader change) until its time is up, not for ever.
    waiting = asyncio.ensure_future(publisher.publish([_msg("quiet.a")], within=2))
    await eventually(lambda: publisher.pending == 1, what="the publish pending")
    publisher.fail_pending("connection lost")  # what the gateway's disconnect callback does
    (outcome,) = await asyncio.wait_for(waiting, FAST)
    assert isinstance(outcome, PublishFailure)
    assert outcome.kind in ("unavailable", "timeout")
    await silent.unsubscribe()
    nats_server.stop()
    await eventually(lambda: not nc.is_connected, what="the client disconnected")
    (outcome,) = await asyncio.wait_for(publisher.publish([_msg("t.a")], within=1), FAST)
    assert isinstance(outcome, PublishFailure)
    assert outcome.kind == "unavailable"


def test_acks_parse_the_same_with_and_without_the_fast_path() -> None:
    def ack(data: bytes) -> Outcome:
        return parse_ack(Msg(Client(), subject="_INBOX.x.1", data=data))

    assert ack(b'{"stream":"T","seq":7}') == Stored(stream="T", sequence=7)
    assert ack(b'{"stream":"T","seq":7,"duplicate":true}') == Stored(
        stream="T", sequence=7, duplicate=True
    )
    # Not the plain shape: parsed as JSON, same meaning.
    assert ack(b'{"stream":"T","seq":7,"domain":"hub","duplicate":true}') == Stored(
        stream="T", sequence=7, duplicate=True
    )
    assert ack(b'{"stream":"T.x","seq":7}') == Stored(stream="T.x", sequence=7)
    failure = ack(b'{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 1"}}')
    assert isinstance(failure, PublishFailure)
    assert (failure.kind, failure.err_code) == ("api", 10071)
