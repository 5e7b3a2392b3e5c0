"""GroupCommit's batching rules, with recording fakes for the two ways to store (pure logic;
the integration tests in tests/integration/test_group_commit.py use a real nats-server)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from nats.aio.client import Client
from nats.aio.msg import Msg

from gateway.group_commit import GroupCommit
from gateway.publisher import OutboundMessage, Outcome, PublishFailure, Stored, parse_ack
from jetgate import wire


def _message(event_id: str, stream: str = "S", *, batchable: bool = True) -> OutboundMessage:
    return OutboundMessage(
        subject=f"s.{event_id}",
        payload=b"x",
        headers={wire.MSG_ID: event_id},
        stream=stream,
        batchable=batchable,
    )


class Recorder:
    def __init__(self, refuse: PublishFailure | None = None) -> None:
        self.batches: list[list[str]] = []
        self.singles: list[list[str]] = []
        self.refuse = refuse
        self.sequence = 0
        self.retried = False

    async def atomic(
        self, messages: Sequence[OutboundMessage], *, within: float
    ) -> list[Stored] | PublishFailure:
        self.batches.append([m.headers[wire.MSG_ID] for m in messages])
        if self.refuse is not None:
            return self.refuse
        first = self.sequence + 1
        self.sequence += len(messages)
        return [Stored(stream="S", sequence=first + i) for i in range(len(messages))]

    async def each(
        self, messages: Sequence[OutboundMessage], *, within: float, retried: bool = False
    ) -> list[Outcome]:
        self.retried = retried
        self.singles.append([m.headers[wire.MSG_ID] for m in messages])
        outcomes: list[Outcome] = []
        for _ in messages:
            self.sequence += 1
            outcomes.append(Stored(stream="S", sequence=self.sequence))
        return outcomes


async def _turns(count: int = 5) -> None:
    """Let the loop run what is ready (hand-over, launch, the commit's first step)."""
    for _ in range(count):
        await asyncio.sleep(0)


def _group(recorder: Recorder, max_inflight: int = 1, fill: int = 64) -> GroupCommit:
    return GroupCommit(
        atomic=recorder.atomic,
        each=recorder.each,
        streams=["S"],
        max_inflight=max_inflight,
        fill=fill,
    )


def test_accepts_only_batchable_messages_of_atomic_streams() -> None:
    group = _group(Recorder())
    assert group.accepts(_message("a"))
    assert not group.accepts(_message("a", batchable=False))
    assert not group.accepts(_message("a", stream="OTHER"))


async def test_events_of_concurrent_callers_share_a_commit_but_never_an_event_id() -> None:
    recorder = Recorder()
    group = _group(recorder)
    results = await asyncio.gather(
        group.publish([_message("a"), _message("b")], within=5),
        group.publish([_message("c")], within=5),
        group.publish([_message("a"), _message("d")], within=5),
    )
    assert recorder.batches == [["a", "b", "c"], ["a", "d"]]
    assert [[o.sequence for o in r if isinstance(o, Stored)] for r in results] == [
        [1, 2],
        [3],
        [4, 5],
    ]


async def test_a_refused_batch_is_retried_event_by_event() -> None:
    refused = PublishFailure(kind="api", description="duplicate", code=400, err_code=10201)
    recorder = Recorder(refuse=refused)
    group = _group(recorder)
    results = await asyncio.gather(*(group.publish([_message(i)], within=5) for i in "abc"))
    assert recorder.batches == [["a", "b", "c"]]
    assert recorder.singles == [["a", "b", "c"]]
    assert all(isinstance(r[0], Stored) for r in results)


async def test_a_batch_without_answer_is_published_again_event_by_event_as_retries() -> None:
    # A leader change: the batch may be stored or not; each event again, with its id.
    lost = PublishFailure(kind="unavailable", description="connection closed")
    recorder = Recorder(refuse=lost)
    group = _group(recorder)
    results = await asyncio.gather(*(group.publish([_message(i)], within=5) for i in "ab"))
    assert recorder.singles == [["a", "b"]]
    assert recorder.retried
    assert all(isinstance(r[0], Stored) for r in results)


async def test_a_failed_batch_without_time_left_is_every_events_answer() -> None:
    lost = PublishFailure(kind="unavailable", description="connection closed")
    recorder = Recorder(refuse=lost)
    group = _group(recorder)
    results = await asyncio.gather(*(group.publish([_message(i)], within=0) for i in "ab"))
    assert recorder.singles == []
    assert all(isinstance(r[0], PublishFailure) for r in results)


async def test_an_event_whose_caller_gave_up_while_queued_is_not_sent() -> None:
    recorder = Recorder()
    started, release = asyncio.Event(), asyncio.Event()
    each = recorder.each

    async def slow(messages: Sequence[OutboundMessage], *, within: float) -> list[Outcome]:
        started.set()
        await release.wait()
        return await each(messages, within=within)

    recorder.each = slow  # type: ignore[method-assign, assignment]
    group = _group(recorder)
    first = asyncio.ensure_future(group.publish([_message("first")], within=5))
    await started.wait()
    (late,) = await group.publish([_message("late")], within=0.01)
    release.set()
    await first
    await group.close()
    assert isinstance(late, PublishFailure)
    assert late.kind == "timeout"
    assert recorder.singles == [["first"]]
    assert recorder.batches == []


def test_an_atomic_commit_ack_carries_its_count() -> None:
    def ack(data: bytes) -> Outcome:
        return parse_ack(Msg(Client(), subject="_INBOX.x.1", data=data))

    # As nats-server 2.12+ acknowledges a commit; a plain ack is no atomic commit.
    assert ack(b'{"stream":"T","seq":9,"batch":"b1","count":3}') == Stored(
        stream="T", sequence=9, batch_count=3
    )
    assert ack(b'{"stream":"T","seq":9}') == Stored(stream="T", sequence=9, batch_count=0)


async def test_a_trickle_gathers_behind_the_commit_under_way_a_flood_does_not() -> None:
    recorder = Recorder()
    started, release = asyncio.Event(), asyncio.Event()
    each = recorder.each

    async def slow(messages: Sequence[OutboundMessage], *, within: float) -> list[Outcome]:
        started.set()
        await release.wait()
        return await each(messages, within=within)

    recorder.each = slow  # type: ignore[method-assign, assignment]
    group = _group(recorder, max_inflight=4, fill=3)
    first = asyncio.ensure_future(group.publish([_message("a")], within=5))
    await started.wait()
    trickle = [asyncio.ensure_future(group.publish([_message(i)], within=5)) for i in "bc"]
    await _turns()
    assert recorder.batches == []  # 2 waiting < fill 3: they gather behind "a"
    flood = asyncio.ensure_future(group.publish([_message(i) for i in "def"], within=5))
    await _turns()
    assert recorder.batches == [["b", "c", "d", "e", "f"]]  # 5 waiting >= fill: started
    release.set()
    await asyncio.gather(first, *trickle, flood)
    assert recorder.singles == [["a"]]
