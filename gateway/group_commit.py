"""Group commit: events ready at the same moment for one stream share one atomic batch.

When nats-server syncs every write to disk (`sync_interval: always`, jetgate's
`durability = "fsync"`), every stored message costs an fsync, so pipelined single
publishes crawl (~5k events/s on the 2-core bench box). A JetStream atomic batch is
committed with one fsync whatever it holds. So, per stream, the events handed over by
any number of RPCs (unary calls, batches, stream messages) queue up; a commit takes what
is queued when it starts (up to `max_batch`, JetStream's limit of 1000) and sends it as
one atomic batch; at most `max_inflight` commits per stream are under way (JetStream
allows 50 per stream over all clients), and while one is, another starts only once `fill`
events wait: events arriving meanwhile gather for the next commit. At low load a commit
holds one event (sent as a plain publish); under load batches grow.

Each event gets exactly the result it would get alone:
- An atomic batch is stored contiguously (JetStream applies it under the stream's lock),
  so event i of a batch committed at sequence `last` has `last - (n - 1) + i`.
- A batch JetStream refuses (an event already stored: 10201; any rule; too many batches
  in flight) is published again event by event, so a stored duplicate is answered
  `duplicate = true` and its neighbours are stored. Only an answer that is not a refusal
  (no connection, no answer in time) is every event's answer, as it would be alone.
- Two events with one event id never share a batch (the second would be a duplicate
  inside the batch, and the sequences of the others would not follow from the commit).
- Events with a precondition, events without room for the batch headers
  (`OutboundMessage.batchable`) and events of streams without `allow_atomic` are not
  accepted: the publisher sends them alone, pipelined.

Leader changes (see `gateway.publisher`): a commit waits for its answer at most
`attempt_limit`; one failing for a transient reason (`retryable`: no responders, no answer,
no connection) may have been stored or not, so its events are published again one by one
with their ids (`each(..., retried=True)`, which retries until the time runs out and
reports a duplicate as the original store, the batch having stored it).

Time: every caller waits at most its own `within`; a commit runs for the longest `within`
of its events (none outlives its caller by more than the difference). An event whose
caller gave up (timeout, cancellation) before its commit started is not sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field

from gateway.config import StreamConfig
from gateway.publisher import (
    OutboundMessage,
    Outcome,
    Publisher,
    PublishFailure,
    Stored,
    attempt_limit,
    retryable,
)
from jetgate import wire

log = logging.getLogger("jetgate.gateway")
# Commits under way per stream; JetStream allows 50 per stream (all publishers together).
# Fewer means bigger batches, so fewer fsyncs per event: on the 2-core bench box 2-4 in
# flight gave PublishBatch/PublishStream 1.3-1.7x the rate of 8 (python -m bench --fsync
# always); 1 leaves the disk idle while the next batch is sent.
MAX_INFLIGHT = 4
# While a commit is under way, another starts only once this many events wait: a trickle
# (unary calls) gathers behind the one under way, a flood (batches) is committed in parallel.
FILL = 64

Atomic = Callable[..., Awaitable[list[Stored] | PublishFailure]]
Each = Callable[..., Awaitable[list[Outcome]]]


class _Call:
    """The outcomes of one caller's events, filled in by index."""

    __slots__ = ("done", "gone", "missing", "outcomes")

    def __init__(self, count: int, done: asyncio.Future[None]) -> None:
        self.outcomes: list[Outcome | None] = [None] * count
        self.missing = count
        self.done = done
        self.gone = False  # the caller stopped waiting

    def settle(self, index: int, outcome: Outcome) -> None:
        if self.outcomes[index] is None:
            self.outcomes[index] = outcome
            self.missing -= 1
            if not self.missing and not self.done.done():
                self.done.set_result(None)


@dataclass(slots=True)
class _Entry:
    message: OutboundMessage
    call: _Call
    index: int
    deadline: float  # loop time


@dataclass(slots=True)
class _Lane:
    """One stream's queue of events and its commits under way."""

    queue: deque[_Entry] = field(default_factory=deque)
    inflight: int = 0
    scheduled: bool = False


class GroupCommit:
    """Coalesces the events of one stream into atomic batches (a `publisher.Coalescer`)."""

    def __init__(
        self,
        *,
        atomic: Atomic,
        each: Each,
        streams: Collection[str],
        max_batch: int = wire.MAX_ATOMIC_BATCH_ENTRIES,
        max_inflight: int = MAX_INFLIGHT,
        fill: int = FILL,
    ) -> None:
        """`atomic(messages, within=)`: store all or none (`Publisher.publish_atomic`);
        `each(messages, within=)`: store independently (`Publisher.publish_each`);
        `streams`: the streams that allow atomic batches."""
        self._atomic = atomic
        self._each = each
        self._streams = frozenset(streams)
        self._max_batch = max(1, min(max_batch, wire.MAX_ATOMIC_BATCH_ENTRIES))
        self._max_inflight = max(1, max_inflight)
        self._fill = max(1, fill)
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def accepts(self, message: OutboundMessage) -> bool:
        """Whether `message` may share a batch: batchable, for a stream allowing atomic."""
        return message.batchable and message.stream in self._streams

    async def publish(self, messages: Sequence[OutboundMessage], *, within: float) -> list[Outcome]:
        """Queue `messages` for their streams' next commits; one outcome each, in order."""
        loop = asyncio.get_running_loop()
        call = _Call(len(messages), loop.create_future())
        deadline = loop.time() + within
        for index, message in enumerate(messages):
            lane = self._lanes.setdefault(message.stream, _Lane())
            lane.queue.append(_Entry(message, call, index, deadline))
            self._schedule(lane)
        try:
            async with asyncio.timeout(within):
                await call.done
        except TimeoutError:
            pass
        finally:
            call.gone = True
        expired = PublishFailure(
            kind="timeout", description=f"not sent and acknowledged within {within:.3g}s"
        )
        return [o if o is not None else expired for o in call.outcomes]

    async def close(self) -> None:
        """Wait for the commits under way (each ends within its events' time limit)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _schedule(self, lane: _Lane) -> None:
        # Started on the next turn of the loop, so what other tasks hand over in this
        # turn joins the same commit.
        if not lane.scheduled and lane.inflight < self._max_inflight:
            lane.scheduled = True
            asyncio.get_running_loop().call_soon(self._launch, lane)

    def _launch(self, lane: _Lane) -> None:
        lane.scheduled = False
        while lane.queue and lane.inflight < self._max_inflight:
            if lane.inflight and len(lane.queue) < self._fill:
                return  # wait for the commit under way, gathering more
            batch = self._take(lane)
            if not batch:
                continue
            lane.inflight += 1
            task = asyncio.ensure_future(self._commit(lane, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self, lane: _Lane) -> list[_Entry]:
        """The next batch: queued events whose callers still wait, one per event id."""
        batch: list[_Entry] = []
        ids: set[str] = set()
        while lane.queue and len(batch) < self._max_batch:
            entry = lane.queue[0]
            if entry.call.gone:
                lane.queue.popleft()
                continue
            msg_id = entry.message.headers.get(wire.MSG_ID, "")
            if msg_id in ids:
                break
            ids.add(msg_id)
            batch.append(lane.queue.popleft())
        return batch

    async def _commit(self, lane: _Lane, batch: list[_Entry]) -> None:
        try:
            loop = asyncio.get_running_loop()
            deadline = max(e.deadline for e in batch)
            within = max(0.0, deadline - loop.time())
            messages = [e.message for e in batch]
            if len(batch) == 1:
                outcomes = await self._each(messages, within=within)
            else:
                stored = await self._atomic(messages, within=min(within, attempt_limit(within)))
                if retryable(stored) and deadline > loop.time():
                    # Stored or not: each again with its id (a duplicate is our own store).
                    outcomes = await self._each(
                        messages, within=deadline - loop.time(), retried=True
                    )
                elif isinstance(stored, PublishFailure) and stored.kind == "api":
                    # Refused: one event may be a stored duplicate or break a rule; alone,
                    # each gets its own answer and none fails its neighbours.
                    outcomes = await self._each(messages, within=within)
                elif isinstance(stored, PublishFailure):
                    outcomes = [stored] * len(batch)
                else:
                    outcomes = list(stored)
            for entry, outcome in zip(batch, outcomes, strict=True):
                entry.call.settle(entry.index, outcome)
        except Exception as exc:  # never leave a caller waiting on a broken commit
            log.exception("group commit of %d events failed", len(batch))
            failure = PublishFailure(kind="unavailable", description=f"group commit: {exc!r}")
            for entry in batch:
                entry.call.settle(entry.index, failure)
        finally:
            lane.inflight -= 1
            if lane.queue:
                self._schedule(lane)


def group_commit(publisher: Publisher, streams: Sequence[StreamConfig]) -> GroupCommit:
    """Group commit through `publisher` for the configured streams that allow atomic batches."""
    for stream in streams:
        if not stream.allow_atomic:
            log.warning(
                "stream %s: allow_atomic = false, so under durability = fsync each of its "
                "events is its own fsync (no group commit)",
                stream.name,
            )
    return GroupCommit(
        atomic=publisher.publish_atomic,
        each=publisher.publish_each,
        streams=[s.name for s in streams if s.allow_atomic],
    )
