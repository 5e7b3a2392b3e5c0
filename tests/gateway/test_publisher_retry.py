"""Leader changes invisible to callers: the publisher retries transient failures with the
same id (a real nats-server whose stream is missing for a moment, as during an election)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig as JsStreamConfig

from gateway.group_commit import GroupCommit
from gateway.publisher import OutboundMessage, Publisher, PublishFailure, Stored, retryable
from jetgate import wire
from tests.support.eventually import eventually


def _msg(subject: str, msg_id: str, **headers: str) -> OutboundMessage:
    return OutboundMessage(
        subject=subject,
        payload=b"x",
        headers={wire.MSG_ID: msg_id, **headers},
        stream="T",
        batchable=not headers,
    )


def _count_sends(nc: Client, monkeypatch: pytest.MonkeyPatch, prefix: str) -> list[str]:
    """Record the subjects published on under `prefix` (every attempt counts)."""
    sent: list[str] = []
    publish: Callable[..., Awaitable[None]] = nc.publish

    async def counting(subject: str, *args: Any, **kwargs: Any) -> None:
        if subject.startswith(prefix):
            sent.append(subject)
        await publish(subject, *args, **kwargs)

    monkeypatch.setattr(nc, "publish", counting)
    return sent


async def _stream(nc: Client) -> None:
    config = JsStreamConfig(name="T", subjects=["t.>"], allow_atomic=True)
    await nc.jetstream().add_stream(config)


async def test_no_responders_is_retried_until_the_stream_answers(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher = Publisher(nc)
    await publisher.start()
    sent = _count_sends(nc, monkeypatch, "t.")
    waiting = asyncio.ensure_future(publisher.publish([_msg("t.a", "once")], within=60))
    # Answered "no responders" (no stream: an election) and sent again.
    await eventually(lambda: len(sent) >= 2, what="the publish retried")
    await _stream(nc)
    (outcome,) = await asyncio.wait_for(waiting, 60)
    assert outcome == Stored(stream="T", sequence=1)
    await publisher.close()


async def test_a_duplicate_after_our_own_retry_is_the_original_store(nc: Client) -> None:
    await _stream(nc)
    publisher = Publisher(nc)
    await publisher.start()
    await publisher.publish([_msg("t.a", "once")], within=5)
    # Sent once by the caller: a duplicate answer is a store by one of our attempts.
    (outcome,) = await publisher.publish_each([_msg("t.a", "once")], within=5, retried=True)
    assert outcome == Stored(stream="T", sequence=1, duplicate=False)
    # Not retried: the caller sent it twice, it is told so.
    (outcome,) = await publisher.publish([_msg("t.a", "once")], within=5)
    assert outcome == Stored(stream="T", sequence=1, duplicate=True)
    await publisher.close()


async def test_real_conflicts_are_never_retried(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _stream(nc)
    publisher = Publisher(nc)
    await publisher.start()
    sent = _count_sends(nc, monkeypatch, "t.")
    conflict = _msg("t.a", "c", **{wire.EXPECTED_LAST_SEQUENCE: "5"})
    (outcome,) = await publisher.publish([conflict], within=60)
    assert isinstance(outcome, PublishFailure)
    assert (outcome.kind, outcome.err_code) == ("api", wire.JS_WRONG_LAST_SEQUENCE)
    assert len(sent) == 1
    await publisher.close()


async def test_a_group_commit_without_answer_is_retried_and_stores_each_once(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher = Publisher(nc)
    await publisher.start()
    group = GroupCommit(atomic=publisher.publish_atomic, each=publisher.publish_each, streams=["T"])
    publisher.coalesce_with(group)
    sent = _count_sends(nc, monkeypatch, "t.")
    waiting = asyncio.gather(
        *(publisher.publish([_msg(f"t.{i}", f"id-{i}")], within=60) for i in range(5))
    )
    await eventually(lambda: len(sent) >= 10, what="the commit retried")
    await _stream(nc)
    results = await asyncio.wait_for(waiting, 60)
    outcomes = [r[0] for r in results]
    assert all(isinstance(o, Stored) and not o.duplicate for o in outcomes), outcomes
    assert sorted(o.sequence for o in outcomes if isinstance(o, Stored)) == [1, 2, 3, 4, 5]
    await group.close()
    await publisher.close()


def test_what_is_retried() -> None:
    assert retryable(PublishFailure(kind="timeout", description=""))
    assert retryable(PublishFailure(kind="unavailable", description="", code=503))
    in_process = PublishFailure(kind="api", description="", err_code=wire.JS_MSG_ID_IN_PROCESS)
    assert retryable(in_process)
    conflict = PublishFailure(kind="api", description="", err_code=wire.JS_WRONG_LAST_SEQUENCE)
    assert not retryable(conflict)
    assert not retryable(PublishFailure(kind="denied", description=""))
    full = PublishFailure(kind="api", description="", code=503, err_code=10023)
    assert not retryable(full)
    assert not retryable(Stored(stream="T", sequence=1))
