"""Pipelined JetStream publishing over one NATS connection.

Every message is published with its own reply subject under one wildcard inbox
subscription (`<inbox>.*`), so any number of publishes from any number of RPCs share one
pipeline: nothing waits for the previous acknowledgement. At most `max_pending` messages
await an acknowledgement at once (the window); further publishes wait for room.

A publish ends in exactly one of: `Stored` (JetStream acknowledged storage, possibly as a
duplicate), or `PublishFailure`: JetStream's API error, `unavailable` (no connection or no
stream answered; the event may or may not be stored, a retry with the same event id is
safe), or `timeout` (no acknowledgement in time; same retry rule). Nothing is dropped
silently: a lost connection fails every pending publish at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from jetgate import wire

FailureKind = Literal["api", "unavailable", "timeout"]


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundMessage:
    """One message to store: subject, payload and headers (copied before sending)."""

    subject: str
    payload: bytes
    headers: dict[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class Stored:
    """JetStream's acknowledgement of one stored message."""

    stream: str
    sequence: int
    duplicate: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishFailure:
    """Why a message was not acknowledged. `err_code` is JetStream's, 0 when none."""

    kind: FailureKind
    description: str
    code: int = 0
    err_code: int = 0


Outcome = Stored | PublishFailure


class Publisher:
    """Publishes to JetStream through one reply-inbox subscription with a bounded window."""

    def __init__(self, nc: NATS, *, max_pending: int = 4096) -> None:
        self._nc = nc
        self._window = asyncio.Semaphore(max_pending)
        self._waiting: dict[str, asyncio.Future[Outcome]] = {}
        self._tokens = itertools.count(1)
        self._prefix = ""
        self._sub: Subscription | None = None

    async def start(self) -> None:
        """Subscribe the reply inbox. Call once, after connecting."""
        self._prefix = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(
            f"{self._prefix}.*", cb=self._on_reply, pending_msgs_limit=0, pending_bytes_limit=0
        )

    async def close(self) -> None:
        """Fail what is still pending and drop the inbox subscription."""
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
        for future in waiting.values():
            if not future.done():
                future.set_result(failure)

    async def publish(
        self, messages: Sequence[OutboundMessage], *, ack_timeout: float
    ) -> list[Outcome]:
        """Publish `messages` pipelined: one outcome each, in order, within `ack_timeout` s."""
        futures = [await self._send(m) for m in messages]
        return await self._collect(futures, ack_timeout)

    async def publish_atomic(
        self, messages: Sequence[OutboundMessage], *, ack_timeout: float
    ) -> list[Stored] | PublishFailure:
        """Store all of `messages` or none (JetStream atomic batch, stream `allow_atomic`).

        The first message starts the batch and the last commits it; both carry a reply
        subject, the ones between travel without one (one round trip per batch). JetStream
        acknowledges the commit with the last sequence and the count.
        """
        batch_id = uuid.uuid4().hex
        last = len(messages) - 1
        futures: list[asyncio.Future[Outcome]] = []
        for index, message in enumerate(messages):
            headers = dict(message.headers)
            headers[wire.BATCH_ID] = batch_id
            headers[wire.BATCH_SEQUENCE] = str(index + 1)
            if index == last:
                headers[wire.BATCH_COMMIT] = "1"
            if index in (0, last):
                framed = OutboundMessage(
                    subject=message.subject, payload=message.payload, headers=headers
                )
                futures.append(await self._send(framed))
                continue
            try:  # `headers` is ours alone: nats-py may change it
                await self._nc.publish(message.subject, message.payload, headers=headers)
            except NatsError as exc:
                failure = PublishFailure(
                    kind="unavailable", description=f"NATS publish failed: {exc!r}"
                )
                _resolve(futures, failure)  # the server abandons the incomplete batch
                return failure
        outcomes = await self._collect(futures, ack_timeout)
        for outcome in outcomes:
            if isinstance(outcome, PublishFailure):
                return outcome
        commit = outcomes[-1]
        assert isinstance(commit, Stored)
        first = commit.sequence - last
        return [Stored(stream=commit.stream, sequence=first + i) for i in range(len(messages))]

    async def last_stored_id(self, stream: str, subject: str) -> tuple[int, str] | None:
        """Sequence and event id of the last message stored on `subject`, if any."""
        try:
            msg = await self._nc.jetstream().get_last_msg(stream, subject)
        except (TimeoutError, NatsError):
            return None
        return msg.seq or 0, (msg.headers or {}).get(wire.MSG_ID, "")

    async def _send(self, message: OutboundMessage) -> asyncio.Future[Outcome]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        if not self._nc.is_connected:
            future.set_result(
                PublishFailure(kind="unavailable", description="not connected to NATS")
            )
            return future
        await self._window.acquire()
        token = f"{self._prefix}.{next(self._tokens)}"
        self._waiting[token] = future
        future.add_done_callback(lambda _: self._settled(token))
        try:
            await self._nc.publish(
                message.subject, message.payload, reply=token, headers=dict(message.headers)
            )
        except NatsError as exc:
            self._waiting.pop(token, None)
            if not future.done():
                future.set_result(
                    PublishFailure(kind="unavailable", description=f"NATS publish failed: {exc!r}")
                )
        return future

    async def _collect(
        self, futures: Sequence[asyncio.Future[Outcome]], ack_timeout: float
    ) -> list[Outcome]:
        pending = [f for f in futures if not f.done()]
        if pending:
            # One timer for the whole call: cheaper than asyncio.wait per publish.
            loop = asyncio.get_running_loop()
            expiry = PublishFailure(
                kind="timeout",
                description=f"JetStream did not acknowledge within {ack_timeout:.3g}s",
            )
            timer = loop.call_later(ack_timeout, _resolve, pending, expiry)
            try:
                for future in pending:
                    await future
            finally:
                timer.cancel()
                # Cancelled caller (e.g. the RPC was cancelled): free the window now.
                _resolve(pending, PublishFailure(kind="unavailable", description="cancelled"))
        return [f.result() for f in futures]

    def _settled(self, token: str) -> None:
        self._waiting.pop(token, None)
        self._window.release()

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject, None)
        if future is None or future.done():
            return  # timed out or failed earlier: the late answer has no one to tell
        future.set_result(parse_ack(msg))


def _resolve(futures: Sequence[asyncio.Future[Outcome]], outcome: Outcome) -> None:
    for future in futures:
        if not future.done():
            future.set_result(outcome)


def parse_ack(msg: Msg) -> Outcome:
    """Turn a JetStream publish reply into an outcome."""
    headers = msg.headers or {}
    status = headers.get("Status")
    if status == "503":
        return PublishFailure(
            kind="unavailable",
            code=503,
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
    )
