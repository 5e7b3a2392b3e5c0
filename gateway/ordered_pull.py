"""An ordered read of a stream: an ephemeral pull consumer with explicit pulls.

`OrderedPull` serves `gateway.read`: it reads the messages of one stream matching some
subject filters, in stream order, from a start (sequence or time), and knows when it has
delivered every message stored when it began (the caught-up point).

Why a hand-made ordered pull (not nats-py's push `ordered_consumer`, not direct gets):
- memory is bounded by construction: one pull at a time, at most PULL_BATCH messages and
  `max_bytes` bytes, and the next pull is sent only once the reader took the last message
  of the current one, so a slow gRPC client slows the pulls, never fills memory (a push
  consumer relies on flow control and nats-py's pending limits, and drops on overflow);
- batched direct gets (`$JS.API.DIRECT.GET`) need `allow_direct` on the stream, which the
  gateway does not manage, and cannot follow new events;
- measured in `make bench` (`read-key`, `read-replay`) against nats-py's ordered consumer.

The consumer: ack policy none, memory storage, one replica, `inactive_threshold` as a
backstop (deleted on close). Ordering: with ack none JetStream delivers in stream order;
each delivery's consumer sequence must follow the last one, and a gap (a lost message), a
missing heartbeat or a deleted consumer makes a new consumer start after the last stream
sequence delivered, so nothing is skipped or repeated.

Caught up: the consumer's `num_pending` when it was created counts the matching messages
stored then; the read is caught up once that many were delivered, or a delivery reports
nothing pending after it, or a pull ends without a message (messages deleted meanwhile).
Before it, pulls are `no_wait` (end as soon as nothing is left); after it (following),
pulls wait up to PULL_EXPIRES with idle heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, NamedTuple

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js import api

from jetgate import wire

PULL_BATCH: Final = 2048
PULL_BYTES: Final = 4 * 1024 * 1024
PULL_EXPIRES: Final = 30.0  # s, a waiting pull once caught up
HEARTBEAT: Final = 5.0  # s, idle heartbeat of a waiting pull
INACTIVE_THRESHOLD: Final = 120.0  # s, the server deletes a consumer nobody pulls
API_TIMEOUT: Final = 5.0  # s
# Slack over nats-server's max_payload in a pull's max_bytes (subject, reply, framing), so
# that any one stored message fits a pull.
MESSAGE_SLACK: Final = 64 * 1024
# Consumers made anew in a row without a delivery before the read fails as unavailable.
MAX_RESTARTS: Final = 3


class ReadUnavailable(Exception):
    """NATS cannot serve the read now (disconnected, no answer, consumer lost for good)."""


class Stored(NamedTuple):
    """One stored message: the NATS message and where JetStream keeps it (a tuple: one is
    made per message of a replay, a frozen dataclass costs three times as much)."""

    msg: Msg
    sequence: int
    # When JetStream stored it, nanoseconds since 1970.
    stored_ns: int
    # The last message stored when the read began: the read is caught up after it.
    completes: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class CaughtUp:
    """Every message stored when the read began was yielded before it (yielded when the
    read caught up without a message: none matched, or the last ones were deleted)."""


def ack_metadata(reply: str) -> tuple[int, int, int, int]:
    """(stream sequence, consumer sequence, timestamp ns, pending) of a delivery's reply
    subject: `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`, or
    with domain and account hash `$JS.ACK.<domain>.<hash>.<stream>...<pending>.<token>`."""
    tokens = reply.split(".")
    at = 5 if len(tokens) == 9 else 7  # index of the stream sequence
    return int(tokens[at]), int(tokens[at + 1]), int(tokens[at + 2]), int(tokens[at + 3])


class OrderedPull:
    """Reads one stream in order through an ephemeral pull consumer (see module docstring)."""

    def __init__(self, nc: NATS, stream: str, filters: Sequence[str]) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=API_TIMEOUT)
        self._stream = stream
        self._filters = list(filters)
        self._consumer = ""
        self._sub: Subscription | None = None
        # Deliveries of the current pull (a callback fills it: nats-py's `next_msg` makes a
        # task per message; a deque and one future per wait cost less than asyncio.Queue).
        # Bounded by the pull: at most PULL_BATCH plus a status or two.
        self._arrived: deque[Msg] = deque()
        self._waiter: asyncio.Future[None] | None = None
        # Each pull has its own reply subject `<inbox>.<n>`: a status (end of a pull) is
        # sent there, so one that ends an earlier pull is told apart and ignored.
        self._inbox = ""
        self._pulls = 0
        self._reply = ""
        self._pending_at_start = 0
        self._start: tuple[int, datetime | None] = (0, None)

    @property
    def ready(self) -> bool:
        """Whether something was received and not taken yet (the next item may not wait)."""
        return bool(self._arrived)

    async def count_from(self, sequence: int) -> int:
        """How many matching messages are stored at or after `sequence` now."""
        info = await self._create(sequence=sequence)
        with contextlib.suppress(Exception):
            await self._js.delete_consumer(self._stream, info.name)
        return int(info.num_pending or 0)

    async def bounds(self) -> tuple[int, int]:
        """(first, last) sequence of the stream now."""
        state = (await self._js.stream_info(self._stream)).state
        return int(state.first_seq), int(state.last_seq)

    async def open(self, *, sequence: int = 0, time: datetime | None = None) -> int:
        """Create the consumer at `sequence` or `time` (neither: the first message);
        the number of matching messages stored from there now."""
        self._start = (sequence, time)
        info = await self._create(sequence=sequence, time=time)
        self._consumer = info.name
        self._pending_at_start = int(info.num_pending or 0)
        await self._subscribe()
        return self._pending_at_start

    async def close(self) -> None:
        """Unsubscribe and delete the consumer (best effort: it also expires on its own)."""
        await self._unsubscribe()
        if self._consumer:
            with contextlib.suppress(Exception):
                await self._js.delete_consumer(self._stream, self._consumer)
            self._consumer = ""

    async def chunks(self, *, follow: bool) -> AsyncIterator[list[Stored] | CaughtUp]:
        """The messages in stream order, in chunks: the ones that have arrived (at most a
        pull's), so that a replay costs one step of this iterator per chunk, not per
        message. The caught-up point is marked once: by the `completes` flag of the message
        that reaches it (the last of its chunk), or by CaughtUp when no message does.
        Without `follow` the iteration ends there; with it new messages follow."""
        remaining = self._pending_at_start
        caught_up = remaining == 0
        if caught_up:
            yield CaughtUp()
            if not follow:
                return
        last_sequence = 0
        expected = 1  # consumer sequence of the next delivery
        restarts = 0  # in a row, without a delivery
        while True:
            await self._pull(wait=caught_up)
            timeout = 2 * HEARTBEAT + API_TIMEOUT if caught_up else 2 * API_TIMEOUT
            arrived = self._arrived
            chunk: list[Stored] = []
            received = 0
            restart = False
            while received < PULL_BATCH:
                if not arrived:
                    if chunk:
                        yield chunk
                        chunk = []
                        continue  # more may have arrived meanwhile
                    try:
                        async with asyncio.timeout(timeout):
                            await self._arrival()
                    except TimeoutError:
                        restart = True  # no answer, no heartbeat: consumer or connection lost
                        break
                    continue
                msg = arrived.popleft()
                headers = msg.headers
                status = headers.get(wire.STATUS) if headers and not msg.data else None
                if status is not None:
                    if status == wire.STATUS_IDLE_HEARTBEAT or msg.subject != self._reply:
                        continue
                    if status == wire.STATUS_NO_RESPONDERS:
                        raise ReadUnavailable("JetStream did not answer the pull")
                    description = (headers or {}).get(wire.STATUS_DESCRIPTION, "")
                    if status == wire.STATUS_CONFLICT and "Deleted" in description:
                        restart = True
                    elif received == 0 and not caught_up and status != wire.STATUS_CONFLICT:
                        # 404/408: the pull ended and found nothing at all.
                        caught_up = True
                        yield CaughtUp()
                        if not follow:
                            return
                    break  # 404, 408, 409: this pull is over
                sequence, consumer_sequence, stored_ns, pending = ack_metadata(msg.reply)
                received += 1
                if consumer_sequence != expected:
                    restart = True  # a delivery was lost
                    break
                expected += 1
                restarts = 0
                last_sequence = sequence
                if caught_up:
                    chunk.append(Stored(msg, sequence, stored_ns))
                    continue
                remaining -= 1
                caught_up = remaining <= 0 or pending == 0
                chunk.append(Stored(msg, sequence, stored_ns, caught_up))
                if caught_up:
                    yield chunk
                    chunk = []
                    if not follow:
                        return
            if chunk:
                yield chunk
            if restart:
                restarts += 1
                if restarts > MAX_RESTARTS:
                    raise ReadUnavailable("JetStream stopped delivering the read")
                await self._restart(last_sequence)
                expected = 1

    async def _arrival(self) -> None:
        """Wait until a delivery arrives."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    async def _pull(self, *, wait: bool) -> None:
        """Ask for the next batch: `no_wait` (ends when nothing is left) or a waiting pull."""
        request: dict[str, object] = {
            "batch": PULL_BATCH,
            "max_bytes": max(PULL_BYTES, self._nc.max_payload + MESSAGE_SLACK),
        }
        if wait:
            request["expires"] = int(PULL_EXPIRES * 1e9)
            request["idle_heartbeat"] = int(HEARTBEAT * 1e9)
        else:
            request["no_wait"] = True
        self._pulls += 1
        self._reply = f"{self._inbox}.{self._pulls}"
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{self._consumer}"
        try:
            await self._nc.publish(subject, json.dumps(request).encode(), reply=self._reply)
        except NatsError as exc:
            raise ReadUnavailable(f"cannot pull: {exc!r}") from exc

    async def _subscribe(self) -> None:
        """A fresh inbox and queue (deliveries of an old consumer never mix in)."""
        await self._unsubscribe()
        arrived: deque[Msg] = deque()

        async def deliver(msg: Msg) -> None:
            arrived.append(msg)
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

        self._arrived = arrived
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=deliver)

    async def _unsubscribe(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _restart(self, last_sequence: int) -> None:
        """A new consumer delivering after `last_sequence` (0: from the read's start); the
        old one is deleted."""
        old, self._consumer = self._consumer, ""
        with contextlib.suppress(Exception):
            await self._js.delete_consumer(self._stream, old)
        sequence, time = (last_sequence + 1, None) if last_sequence else self._start
        try:
            info = await self._create(sequence=sequence, time=time)
            self._consumer = info.name
            await self._subscribe()
        except Exception as exc:
            raise ReadUnavailable(f"cannot resume the read at sequence {sequence}: {exc}") from exc

    async def _create(self, *, sequence: int = 0, time: datetime | None = None) -> api.ConsumerInfo:
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=INACTIVE_THRESHOLD,
            max_waiting=4,
        )
        if len(self._filters) == 1:
            config.filter_subject = self._filters[0]
        elif self._filters:
            config.filter_subjects = self._filters
        if time is not None:
            config.deliver_policy = api.DeliverPolicy.BY_START_TIME
            config.opt_start_time = time
        elif sequence > 0:
            config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = sequence
        return await self._js.add_consumer(self._stream, config)
