"""Pipelined JetStream publishing over one NATS connection.

Every message is published with its own reply subject under one wildcard inbox
subscription (`<inbox>.*`), so any number of publishes from any number of RPCs share one
pipeline: nothing waits for the previous acknowledgement. At most `max_pending` messages
await an acknowledgement at once (the window); further publishes wait for room.

A publish ends in exactly one of: `Stored` (JetStream acknowledged storage, possibly as a
duplicate), or `PublishFailure`: JetStream's API error, `unavailable` (no connection or no
stream answered; the event may or may not be stored, a retry with the same event id is
safe), or `timeout` (not acknowledged in time; same retry rule). Nothing is dropped
silently: a lost connection fails every pending publish at once.

With a coalescer (`coalesce_with`, `gateway.group_commit` under `durability = "fsync"`),
`publish` hands the messages it accepts to it, to be stored in atomic batches shared with
other calls; the others are published pipelined as above.

The time limit of a publish (`within`) covers all of it: waiting for room in the window,
handing each message to nats-py (whose publish waits while its outgoing buffer is full,
e.g. while nats-server stalls) and the acknowledgements. nats-py swallows a cancellation
that arrives while it waits to flush, so after each message the publisher checks the
limit itself and sends no more once it has expired.

Leader changes are invisible to callers: during a stream leader election (a JetStream
cluster) a publish is answered "no responders", not answered at all, or, retried with the
same `Nats-Msg-Id` while the first try is still being stored, refused with 10158
("duplicate message id is in process"); with no connection (reconnecting to another node)
it is not sent. `publish_each` publishes such messages again (`retryable`), with the same
headers, hence the same id, after a short growing backoff, each attempt limited to
`attempt_limit(within)`, until `within` runs out. A retried message answered as a duplicate
was most likely stored by one of our own earlier attempts, so it is reported as the
original store (`duplicate = False`): the caller sent it once. Real conflicts (wrong last
sequence 10071 and every other API error) are answered as they come, never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from jetgate import wire

# denied: NATS refused the publish (permissions violation of the gateway's NATS user).
FailureKind = Literal["api", "unavailable", "timeout", "denied"]


# Not frozen: one of each is built per event, and a frozen dataclass costs twice as much to
# build (object.__setattr__ per field). Treat them as immutable all the same.
@dataclass(slots=True, kw_only=True)
class OutboundMessage:
    """One message to store: subject, payload and headers (copied before sending)."""

    subject: str
    payload: bytes
    headers: dict[str, str]
    # The stream it goes to ("": unknown), and whether it may share an atomic batch with
    # others (no precondition; room for the batch headers under every size limit).
    stream: str = ""
    batchable: bool = False


@dataclass(slots=True, kw_only=True)
class Stored:
    """JetStream's acknowledgement of one stored message."""

    stream: str
    sequence: int
    duplicate: bool = False
    # Messages the acknowledged commit of an atomic batch stored (0: not such a commit).
    batch_count: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishFailure:
    """Why a message was not acknowledged. `err_code` is JetStream's, 0 when none."""

    kind: FailureKind
    description: str
    code: int = 0
    err_code: int = 0


Outcome = Stored | PublishFailure

_CANCELLED = PublishFailure(kind="unavailable", description="cancelled")
_NOT_CONNECTED = PublishFailure(kind="unavailable", description="not connected to NATS")
# The usual PubAck, exactly as nats-server writes it; anything else goes through json.
# Retries of transient failures: the first pause, its growth and its ceiling (seconds).
RETRY_BACKOFF = 0.05
RETRY_BACKOFF_MAX = 0.5
# One attempt waits at least this long, or a quarter of the publish's time: long enough not
# to give up on a busy but healthy server, short enough to try again within publish_timeout.
ATTEMPT_MIN = 1.0
_PLAIN_ACK = re.compile(rb'\{"stream":"([A-Za-z0-9_-]+)","seq":(\d+)(,"duplicate":true)?\}')


class _Call:
    """The outcomes of one publish call, filled in (by index) as acknowledgements arrive.

    One future per call instead of one per message: a batch of 100 costs one wake-up.
    """

    __slots__ = ("done", "missing", "outcomes")

    def __init__(self, count: int, done: asyncio.Future[None]) -> None:
        self.outcomes: list[Outcome | None] = [None] * count
        self.missing = count
        self.done = done
        if not count:
            done.set_result(None)

    def settle(self, index: int, outcome: Outcome) -> None:
        """Record the outcome of message `index`; the first one recorded counts."""
        if self.outcomes[index] is None:
            self.outcomes[index] = outcome
            self.missing -= 1
            if not self.missing and not self.done.done():
                self.done.set_result(None)

    def results(self) -> list[Outcome]:
        return [o for o in self.outcomes if o is not None]


class Coalescer(Protocol):
    """Stores the messages it accepts together with others (see `gateway.group_commit`)."""

    def accepts(self, message: OutboundMessage) -> bool:
        """Whether `message` may be stored together with others."""
        ...

    async def publish(self, messages: Sequence[OutboundMessage], *, within: float) -> list[Outcome]:
        """One outcome per message, in order, all within `within` s."""
        ...


class Publisher:
    """Publishes to JetStream through one reply-inbox subscription with a bounded window."""

    def __init__(self, nc: NATS, *, max_pending: int = 4096) -> None:
        self._nc = nc
        self._window = asyncio.Semaphore(max_pending)
        # Reply subject -> the call and index awaiting it, and the subject published on. Each
        # entry holds one window slot, given back exactly when the entry is removed.
        self._waiting: dict[str, tuple[_Call, int, str]] = {}
        self._tokens = itertools.count(1)
        self._prefix = ""
        self._sub: Subscription | None = None
        self._coalescer: Coalescer | None = None
        self._closed = False  # close() was called: nothing more is retried

    def coalesce_with(self, coalescer: Coalescer | None) -> None:
        """From now on, `publish` hands the messages `coalescer` accepts to it (None: none)."""
        self._coalescer = coalescer

    async def start(self) -> None:
        """Subscribe the reply inbox. Call once, after connecting."""
        self._prefix = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(
            f"{self._prefix}.*", cb=self._on_reply, pending_msgs_limit=0, pending_bytes_limit=0
        )

    async def rebind(self, nc: NATS) -> None:
        """Move to `nc`, a new connection replacing a closed one (see `gateway.connection`).

        What was pending on the old connection fails as `unavailable` (its acknowledgements
        can no longer arrive); the reply inbox is subscribed anew on `nc`.
        """
        self.fail_pending("NATS connection closed before JetStream acknowledged")
        old, self._sub = self._sub, None
        if old is not None:
            with contextlib.suppress(NatsError):  # normally gone with its connection
                await old.unsubscribe()
        self._nc = nc
        await self.start()

    async def close(self) -> None:
        """Fail what is still pending and drop the inbox subscription."""
        self._closed = True
        self.fail_pending("gateway shutting down")
        if self._sub is not None:
            with contextlib.suppress(NatsError):
                await self._sub.unsubscribe()
            self._sub = None

    @property
    def pending(self) -> int:
        """Messages sent and awaiting JetStream's acknowledgement."""
        return len(self._waiting)

    def fail_pending(self, reason: str) -> None:
        """Fail every pending publish as `unavailable` (e.g. the connection was lost)."""
        waiting, self._waiting = self._waiting, {}
        failure = PublishFailure(kind="unavailable", description=reason)
        for call, index, _ in waiting.values():
            self._window.release()
            call.settle(index, failure)

    def deny(self, subject: str, reason: str) -> None:
        """Fail the pending publishes on `subject` as `denied`: NATS refused them (a
        permission violation is reported, never answered: they would wait for their timeout).

        nats-py reports the subject in lower case: publishes on any casing of it fail (a
        false refusal at worst, which the caller may retry; never a hang).
        """
        for token, (call, index, published) in list(self._waiting.items()):
            if published.lower() == subject.lower():
                del self._waiting[token]
                self._window.release()
                failure = PublishFailure(
                    kind="denied",
                    description=f"NATS refused publishing on {published!r}: {reason}",
                )
                call.settle(index, failure)

    async def publish(self, messages: Sequence[OutboundMessage], *, within: float) -> list[Outcome]:
        """Publish `messages`: one outcome each, in order, all within `within` s.

        The messages the coalescer (if any) accepts are stored through it, the others are
        published pipelined (`publish_each`).
        """
        group = self._coalescer
        if group is None:
            return await self.publish_each(messages, within=within)
        shared = [group.accepts(m) for m in messages]
        if all(shared):
            return await group.publish(messages, within=within)
        if not any(shared):
            return await self.publish_each(messages, within=within)
        together, alone = await asyncio.gather(
            group.publish([m for m, s in zip(messages, shared, strict=True) if s], within=within),
            self.publish_each(
                [m for m, s in zip(messages, shared, strict=True) if not s], within=within
            ),
        )
        merged, first, second = [], iter(together), iter(alone)
        for s in shared:
            merged.append(next(first) if s else next(second))
        return merged

    async def publish_each(
        self, messages: Sequence[OutboundMessage], *, within: float, retried: bool = False
    ) -> list[Outcome]:
        """Publish `messages` pipelined: one outcome each, in order, all within `within` s.

        Transient failures (`retryable`) are published again with the same headers until
        `within` runs out. `retried`: the messages may have been stored already by an
        earlier attempt (e.g. an atomic batch that was not answered), so a duplicate answer
        is reported as the original store.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        attempt = attempt_limit(within)
        outcomes = await self._publish_once(messages, within=min(attempt, within))
        again = set(range(len(messages))) if retried else set()
        delay = RETRY_BACKOFF
        while not self._closed:
            todo = [i for i, outcome in enumerate(outcomes) if retryable(outcome)]
            if not todo or deadline - loop.time() <= delay:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_BACKOFF_MAX)
            remaining = deadline - loop.time()
            answers = await self._publish_once(
                [messages[i] for i in todo], within=min(attempt, remaining)
            )
            for index, outcome in zip(todo, answers, strict=True):
                outcomes[index] = outcome
                again.add(index)
        expired = _expired(within)
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, Stored) and outcome.duplicate and index in again:
                outcomes[index] = Stored(stream=outcome.stream, sequence=outcome.sequence)
            elif isinstance(outcome, PublishFailure) and outcome.kind == "timeout":
                outcomes[index] = expired
        return outcomes

    async def _publish_once(
        self, messages: Sequence[OutboundMessage], *, within: float
    ) -> list[Outcome]:
        """One attempt of `publish_each`: one outcome each, in order, all within `within` s."""
        call = _Call(len(messages), asyncio.get_running_loop().create_future())
        tokens: list[str] = []
        try:
            async with asyncio.timeout(within) as limit:
                for index, message in enumerate(messages):
                    await self._send(message, call, index, tokens)
                    if limit.expired():
                        break
                else:
                    await call.done
        except TimeoutError:
            pass
        except BaseException:  # the caller was cancelled
            self._abandon(call, tokens)
            raise
        self._abandon(call, tokens, _expired(within))
        return call.results()

    async def publish_atomic(
        self, messages: Sequence[OutboundMessage], *, within: float
    ) -> list[Stored] | PublishFailure:
        """Store all of `messages` or none (JetStream atomic batch, stream `allow_atomic`).

        The first message starts the batch and the last commits it; both carry a reply
        subject, the ones between travel without one (one round trip per batch). JetStream
        acknowledges the commit with the last sequence and the count; the batch is stored
        contiguously, so the first sequence is the last minus the count plus one (checked: a
        commit acknowledged with another count is a failure). A batch cut short (a failed
        send, the time limit) is never committed: the server abandons it.
        """
        batch_id = wire.new_batch_id()
        last = len(messages) - 1
        # Outcomes of the framing messages: the first (index 0) and the commit (index 1).
        call = _Call(1 if last == 0 else 2, asyncio.get_running_loop().create_future())
        tokens: list[str] = []
        try:
            async with asyncio.timeout(within) as limit:
                for index, message in enumerate(messages):
                    # A fresh dict per message: nats-py may change the one it is given.
                    headers = {
                        **message.headers,
                        **wire.batch_headers(batch_id, index + 1, commit=index == last),
                    }
                    framed = OutboundMessage(
                        subject=message.subject, payload=message.payload, headers=headers
                    )
                    if index in (0, last):
                        await self._send(framed, call, 0 if index == 0 else 1, tokens)
                    elif (failure := await self._send_unanswered(framed)) is not None:
                        self._abandon(call, tokens, failure)
                        return failure
                    if limit.expired():
                        break
                else:
                    await call.done
        except TimeoutError:
            pass
        except BaseException:
            self._abandon(call, tokens)
            raise
        self._abandon(call, tokens, _expired(within))
        outcomes = call.results()
        for outcome in outcomes:
            if isinstance(outcome, PublishFailure):
                return outcome
        commit = outcomes[-1]
        assert isinstance(commit, Stored)
        if commit.batch_count != len(messages):
            # Not one atomic commit (e.g. a server without atomic batches stored each message
            # on its own): the sequences cannot be derived from the commit's.
            return PublishFailure(
                kind="api",
                description=f"JetStream did not acknowledge one atomic batch of {len(messages)} "
                f"(acknowledged {commit.batch_count or 'no'} batch count)",
            )
        first = commit.sequence - last
        return [Stored(stream=commit.stream, sequence=first + i) for i in range(len(messages))]

    async def last_stored_id(self, stream: str, subject: str) -> tuple[int, str] | None:
        """Sequence and event id of the last message stored on `subject`, if any."""
        try:
            msg = await self._nc.jetstream().get_last_msg(stream, subject)
        except (TimeoutError, NatsError):
            return None
        return msg.seq or 0, (msg.headers or {}).get(wire.MSG_ID, "")

    async def last_sequence(self, stream: str, subject_filter: str = "") -> int | None:
        """The last sequence of `stream` (on `subject_filter` when given, wildcards allowed;
        0: nothing stored there), None when JetStream does not answer."""
        js = self._nc.jetstream()
        try:
            if not subject_filter:
                return int((await js.stream_info(stream)).state.last_seq)
            return (await js.get_last_msg(stream, subject_filter)).seq or 0
        except NotFoundError:
            return 0 if subject_filter else None
        except (TimeoutError, NatsError):
            return None

    async def _send(
        self, message: OutboundMessage, call: _Call, index: int, tokens: list[str]
    ) -> None:
        """Send `message` with its own reply subject; its outcome goes to `call[index]`."""
        if not self._nc.is_connected:
            call.settle(index, _NOT_CONNECTED)
            return
        await self._window.acquire()
        token = f"{self._prefix}.{next(self._tokens)}"
        self._waiting[token] = (call, index, message.subject)
        tokens.append(token)
        try:  # a fresh header dict: nats-py may change the one it is given
            await self._nc.publish(
                message.subject, message.payload, reply=token, headers=dict(message.headers)
            )
        except NatsError as exc:
            self._unsent(token, call, index, exc)

    async def _send_unanswered(self, message: OutboundMessage) -> PublishFailure | None:
        """Send `message` (its headers ours alone) without a reply subject."""
        try:
            await self._nc.publish(message.subject, message.payload, headers=message.headers)
        except NatsError as exc:
            return PublishFailure(kind="unavailable", description=f"NATS publish failed: {exc!r}")
        return None

    def _unsent(self, token: str, call: _Call, index: int, exc: NatsError) -> None:
        if self._waiting.pop(token, None) is not None:
            self._window.release()
        failure = PublishFailure(kind="unavailable", description=f"NATS publish failed: {exc!r}")
        call.settle(index, failure)

    def _abandon(
        self,
        call: _Call,
        tokens: Sequence[str],
        outcome: Outcome = _CANCELLED,
    ) -> None:
        """Give up on what `call` still awaits (timeout, cancelled caller): free the window."""
        if not call.missing:
            return
        for token in tokens:
            if (entry := self._waiting.pop(token, None)) is not None:
                self._window.release()
                call.settle(entry[1], outcome)
        for index, settled in enumerate(call.outcomes):
            if settled is None:  # never sent (e.g. cancelled while waiting for the window)
                call.settle(index, outcome)

    async def _on_reply(self, msg: Msg) -> None:
        entry = self._waiting.pop(msg.subject, None)
        if entry is None:
            return  # timed out or failed earlier: the late answer has no one to tell
        self._window.release()
        entry[0].settle(entry[1], parse_ack(msg))


_RETRYABLE_API_ERRORS = frozenset({wire.JS_CLUSTER_NOT_AVAILABLE, wire.JS_MSG_ID_IN_PROCESS})


def attempt_limit(within: float) -> float:
    """How long one attempt of a publish with `within` seconds in all waits for its answer."""
    return max(ATTEMPT_MIN, within / 4)


def retryable(outcome: object) -> bool:
    """Whether `outcome` is transient: the same message (same id) may simply be sent again.

    No answer in time, no responders or no connection (a leader election, a reconnect to
    another node), JetStream's cluster temporarily unavailable (10008), or the same id still
    being stored by an earlier attempt (10158). Never a refusal by a rule or a conflict, nor
    a full store (10023, also API code 503: retrying would only delay RESOURCE_EXHAUSTED).
    """
    if not isinstance(outcome, PublishFailure):
        return False
    if outcome.kind in ("timeout", "unavailable"):
        return outcome is not _CANCELLED
    return outcome.kind == "api" and outcome.err_code in _RETRYABLE_API_ERRORS


def _expired(within: float) -> PublishFailure:
    return PublishFailure(
        kind="timeout", description=f"not sent and acknowledged within {within:.3g}s"
    )


def parse_ack(msg: Msg) -> Outcome:
    """Turn a JetStream publish reply into an outcome."""
    if (plain := _PLAIN_ACK.fullmatch(msg.data)) is not None:
        return Stored(
            stream=plain[1].decode(), sequence=int(plain[2]), duplicate=plain[3] is not None
        )
    headers = msg.headers or {}
    if headers.get(wire.STATUS) == wire.STATUS_NO_RESPONDERS:
        return PublishFailure(
            kind="unavailable",
            code=int(wire.STATUS_NO_RESPONDERS),
            description="no JetStream stream answered (JetStream down, or stream leader election)",
        )
    if not msg.data:
        # Empty reply: JetStream accepted the first message of an atomic batch.
        return Stored(stream="", sequence=0)
    try:
        body = json.loads(msg.data)
    except ValueError:
        return PublishFailure(kind="api", description=f"unreadable JetStream reply {msg.data!r}")
    error = body.get("error")
    if error:
        return PublishFailure(
            kind="api",
            code=int(error.get("code", 0)),
            err_code=int(error.get("err_code", 0)),
            description=str(error.get("description", "")),
        )
    return Stored(
        stream=str(body.get("stream", "")),
        sequence=int(body.get("seq", 0)),
        duplicate=bool(body.get("duplicate", False)),
        batch_count=int(body.get("count", 0)) if "batch" in body else 0,
    )
