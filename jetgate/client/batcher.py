"""The batching engine of `jetgate.client`: pending events -> PublishStream messages.

One `Batcher` owns one PublishStream call at a time (a `_Session`). A single sender task
takes ready events, forms a batch (BatchSettings), writes it as one request message and
records it as in flight; a reader task matches each response to the oldest batch in flight
(the gateway answers request messages strictly in order) and settles every event with its
own result. An event's failure never touches the others of its batch.

When the stream breaks (gateway restart, UNAVAILABLE, an answer later than
`attempt_timeout`), every batch in flight fails with that status and the next batch opens
a new stream. A failure with a code RetrySettings names is sent again after a backoff,
with the same event id, so the gateway's JetStream de-duplication stores it once.

Several gateways (one stub per address, `jetgate.client.connection`): each new stream opens
on the next address, skipping one the client calls unhealthy (its channel in
TRANSIENT_FAILURE) while another is not, so a dead gateway's events are retried on the
next one. A stream older than `stream_max_age` is retired: it takes no new batch, its
writing side is closed once the batches it carries are answered, and the next batch opens
a stream on the next address.

Ordering per key (`ordered_keys`): PublishStream pipelines request messages, and the
gateway publishes up to `stream_window` of them concurrently, so two request messages may
be stored in either order; and a retried event would land after events sent later. So the
client keeps at most one event per key in flight: a key's next event waits (in the
client, counting toward `max_in_flight`) until the previous one is settled: stored, or
failed for good. A failed event does not stop the key: the next one is sent after it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
from google.rpc import status_pb2

from jetgate.client.connection import Metadata
from jetgate.client.errors import publish_error, status_of
from jetgate.client.result import Published
from jetgate.client.settings import BatchSettings, RetrySettings
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc

# Bytes a request message adds around each entry (field tag and length prefix).
ENTRY_OVERHEAD = 6
StreamCall = grpc.aio.StreamStreamCall[
    gateway_pb2.PublishBatchRequest, gateway_pb2.PublishBatchResponse
]


async def _no_metadata() -> Metadata:
    return ()


@dataclass(slots=True, eq=False, kw_only=True)
class Pending:
    """One event inside the client, from publish() until its result is known."""

    request: gateway_pb2.PublishRequest
    event_id: str
    key: str
    size: int
    future: asyncio.Future[Published]
    deadline: float  # time.monotonic() after which it is not retried
    # Called once when the event is settled (the client's in-flight slot is free again).
    on_settled: Callable[[], None] = lambda: None
    queued_at: float = 0.0
    attempts: int = 0


@dataclass(slots=True, eq=False)
class _Session:
    """One PublishStream call and the batches it has not answered yet, oldest first."""

    call: StreamCall
    in_flight: collections.deque[tuple[float, list[Pending]]] = field(
        default_factory=collections.deque
    )
    closed: bool = False
    opened: float = field(default_factory=time.monotonic)
    retired: bool = False
    reader: asyncio.Task[None] | None = None
    watchdog: asyncio.TimerHandle | None = None
    # Set when the watchdog gave up on the stream (the status its batches fail with).
    expired: status_pb2.Status | None = None


class Batcher:
    """Coalesces submitted events into batches over one PublishStream (see the module doc)."""

    def __init__(
        self,
        stubs: Sequence[gateway_pb2_grpc.EventGatewayAsyncStub],
        *,
        batching: BatchSettings,
        retry: RetrySettings,
        metadata: Callable[[], Awaitable[Metadata]] = _no_metadata,
        healthy: Callable[[int], bool] = lambda index: True,
        stream_max_age: float | None = None,
    ) -> None:
        if not stubs:
            raise ValueError("no gateway to publish to")
        self._stubs = tuple(stubs)
        self._next_stub = 0
        self._healthy = healthy
        self._stream_max_age = stream_max_age
        self._batching = batching
        self._retry = retry
        self._metadata = metadata
        self._closing = False
        # Streams that still carry batches: the current one and retired ones.
        self._live: set[_Session] = set()
        self._ready: collections.deque[Pending] = collections.deque()
        self._ready_bytes = 0
        self._waiting: dict[str, collections.deque[Pending]] = {}  # busy keys (ordered_keys)
        self._wake = asyncio.Event()
        self._session: _Session | None = None
        self._sender: asyncio.Task[None] | None = None
        self._timers: dict[asyncio.TimerHandle, Pending] = {}  # retries waiting their backoff
        self._random = random.Random()
        self._background: set[asyncio.Task[None]] = set()
        # Counters (read by tests and the bench): streams opened, request messages sent.
        self.streams_opened = 0
        self.batches_sent = 0
        # Streams opened per address (index into the stubs), for tests and the bench.
        self.streams_per_address = [0] * len(self._stubs)

    def submit(self, pending: Pending) -> None:
        """Queue `pending` for sending (behind its key's earlier events when ordered)."""
        if self._sender is None or self._sender.done():
            # Not in the first caller's context (its trace, its baggage): the sender and the
            # streams it opens serve every caller.
            self._sender = asyncio.create_task(
                self._send_loop(), name="jetgate-client-sender", context=contextvars.Context()
            )
        if self._batching.ordered_keys:
            if pending.key in self._waiting:
                self._waiting[pending.key].append(pending)
                return
            self._waiting[pending.key] = collections.deque()
        self._enqueue(pending)

    async def close(self) -> None:
        """Stop sending: the stream is closed and events not yet settled fail UNAVAILABLE."""
        self._closing = True
        retrying = list(self._timers.values())
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        self._session = None
        for session in list(self._live):
            session.call.cancel()
            if session.reader is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await session.reader
        closed = status_pb2.Status(
            code=grpc.StatusCode.UNAVAILABLE.value[0], message="client closed"
        )
        unsent = [*retrying, *self._ready]
        for queue in self._waiting.values():
            unsent.extend(queue)
        self._ready.clear()
        self._ready_bytes = 0
        self._waiting.clear()
        for pending in unsent:
            self._fail(pending, closed)

    def _enqueue(self, pending: Pending) -> None:
        pending.queued_at = time.monotonic()
        self._ready.append(pending)
        self._ready_bytes += pending.size
        self._wake.set()

    # -- sending --------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        settings = self._batching
        while True:
            while not self._ready:
                self._wake.clear()
                await self._wake.wait()
            # Let every coroutine that is ready in this loop iteration add its event first.
            await asyncio.sleep(0)
            # While the stream has batches in flight, gather more for up to max_delay.
            while not self._full() and self._busy():
                remaining = self._ready[0].queued_at + settings.max_delay - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._wake.wait()
            while self._in_flight() >= settings.max_batches_in_flight:
                self._wake.clear()
                await self._wake.wait()
            batch = self._take()
            try:
                await self._send(batch)
            except Exception as exc:  # a bug, not the stream: these events fail, others go on
                failed = _status(grpc.StatusCode.INTERNAL, f"client failed to send: {exc!r}")
                for pending in batch:
                    if not any(pending in sent for _, sent in self._sent_batches()):
                        self._fail(pending, failed)

    def _sent_batches(self) -> collections.deque[tuple[float, list[Pending]]]:
        session = self._session
        return collections.deque() if session is None else session.in_flight

    def _busy(self) -> bool:
        return self._in_flight() > 0

    def _in_flight(self) -> int:
        session = self._session
        return 0 if session is None or session.closed else len(session.in_flight)

    def _full(self) -> bool:
        settings = self._batching
        return len(self._ready) >= settings.max_events or self._ready_bytes >= settings.max_bytes

    def _take(self) -> list[Pending]:
        """The next batch: ready events up to max_events and max_bytes (at least one)."""
        settings = self._batching
        batch = [self._ready.popleft()]
        size = batch[0].size
        while self._ready and len(batch) < settings.max_events:
            if size + self._ready[0].size > settings.max_bytes:
                break
            pending = self._ready.popleft()
            size += pending.size
            batch.append(pending)
        self._ready_bytes -= size
        return batch

    async def _send(self, batch: list[Pending]) -> None:
        for gave_up in [p for p in batch if p.future.done()]:  # its caller was cancelled
            self._release(gave_up)
        batch = [p for p in batch if not p.future.done()]
        if not batch:
            return
        session = self._session
        if session is not None and not session.closed and self._too_old(session):
            self._retire(session)
            session = None
        if session is None or session.closed:
            try:
                session = await self._open()
            except Exception as exc:  # e.g. the token provider failed: retried like a break
                failed = _status(grpc.StatusCode.UNAVAILABLE, f"cannot open a stream: {exc}")
                for pending in batch:
                    pending.attempts += 1
                    self._failed(pending, failed)
                return
        for pending in batch:
            pending.attempts += 1
        session.in_flight.append((time.monotonic(), batch))
        self.batches_sent += 1
        request = gateway_pb2.PublishBatchRequest(entries=[p.request for p in batch])
        try:
            await session.call.write(request)
        except Exception:  # the reader settles the batch: the call has ended
            session.call.cancel()

    async def _open(self) -> _Session:
        index = self._pick()
        call = self._stubs[index].PublishStream(metadata=await self._metadata())
        session = _Session(call)
        session.reader = asyncio.create_task(self._read_loop(session), name="jetgate-client-reader")
        self._watch(session)
        self._session = session
        self._live.add(session)
        self.streams_opened += 1
        self.streams_per_address[index] += 1
        return session

    def _pick(self) -> int:
        """The address of the next stream: the next in turn that is healthy, if any is."""
        count = len(self._stubs)
        order = [(self._next_stub + i) % count for i in range(count)]
        index = next((i for i in order if self._healthy(i)), order[0])
        self._next_stub = (index + 1) % count
        return index

    def _too_old(self, session: _Session) -> bool:
        age = self._stream_max_age
        return age is not None and time.monotonic() - session.opened >= age

    def _retire(self, session: _Session) -> None:
        """Send no more on `session`; close its writing side once its batches are answered
        (the gateway then ends the call, and its reader ends without failing anything)."""
        session.retired = True
        if self._session is session:
            self._session = None
        if not session.in_flight:
            self._done_writing(session)

    def _done_writing(self, session: _Session) -> None:
        async def close() -> None:
            with contextlib.suppress(Exception):
                await session.call.done_writing()

        task = asyncio.create_task(close(), name="jetgate-client-retire")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- answers --------------------------------------------------------------------------

    async def _read_loop(self, session: _Session) -> None:
        status: status_pb2.Status | None = None
        try:
            while True:
                response = await session.call.read()
                if response is grpc.aio.EOF:
                    status = _status(grpc.StatusCode.UNAVAILABLE, "the stream ended")
                    return
                assert isinstance(response, gateway_pb2.PublishBatchResponse)
                if not session.in_flight:
                    status = _status(grpc.StatusCode.INTERNAL, "an answer to nothing sent")
                    return
                _, batch = session.in_flight.popleft()
                self._settle(batch, response)
                if session.retired and not session.in_flight:
                    self._done_writing(session)
                self._wake.set()
        except grpc.aio.AioRpcError as error:
            status = session.expired or status_of(error)
        except asyncio.CancelledError:
            # The watchdog cancelled the call (an answer overdue): the stream failed, this
            # task goes on to settle its batches. Else this task itself was cancelled.
            if session.expired is None:
                status = _status(grpc.StatusCode.UNAVAILABLE, "the stream was cancelled")
                raise
            status = session.expired
        finally:
            session.closed = True
            self._live.discard(session)
            if self._session is session:
                self._session = None
            if session.watchdog is not None:
                session.watchdog.cancel()
            session.call.cancel()
            self._abandon(session, status or _status(grpc.StatusCode.UNAVAILABLE, "stream ended"))
            self._wake.set()

    def _watch(self, session: _Session) -> None:
        """Cancel `session`'s call when its oldest batch waits past attempt_timeout.

        A timer, not a timeout per read: checking every quarter of attempt_timeout costs
        nothing per answer (an overdue batch fails within 1.25 x attempt_timeout).
        """
        limit = self._retry.attempt_timeout
        if session.closed:
            return
        if session.in_flight and time.monotonic() - session.in_flight[0][0] >= limit:
            session.expired = _status(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {limit}s"
            )
            session.call.cancel()
            return
        loop = asyncio.get_running_loop()
        session.watchdog = loop.call_later(limit / 4, self._watch, session)

    def _abandon(self, session: _Session, status: status_pb2.Status) -> None:
        """Fail the batches `session` never answered: the oldest with `status`; the others,
        which did not cause a refusal of the stream, with a retryable UNAVAILABLE."""
        first = True
        while session.in_flight:
            _, batch = session.in_flight.popleft()
            use = status
            if not first and _code(status) not in self._retry.codes:
                use = _status(grpc.StatusCode.UNAVAILABLE, f"stream ended: {status.message}")
            first = False
            for pending in batch:
                self._failed(pending, use)

    def _settle(self, batch: list[Pending], response: gateway_pb2.PublishBatchResponse) -> None:
        if len(response.results) != len(batch):
            wrong = _status(grpc.StatusCode.INTERNAL, "the gateway answered a different count")
            for pending in batch:
                self._fail(pending, wrong)
            return
        for pending, result in zip(batch, response.results, strict=True):
            if result.HasField("ok"):
                ok = result.ok
                self._done(
                    pending,
                    Published(
                        event_id=ok.event_id,
                        stream=ok.stream,
                        subject=ok.subject,
                        sequence=ok.sequence,
                        duplicate=ok.duplicate,
                    ),
                )
            else:
                self._failed(pending, result.error)

    def _failed(self, pending: Pending, status: status_pb2.Status) -> None:
        """Retry `pending` when the policy allows, else fail it with `status`."""
        retry = self._retry
        code = _code(status)
        if (
            code in retry.codes
            and not self._closing
            and pending.attempts < retry.max_attempts
            and not pending.future.done()
        ):
            delay = retry.backoff(pending.attempts, self._random.random())
            if time.monotonic() + delay < pending.deadline:
                loop = asyncio.get_running_loop()
                handle: asyncio.TimerHandle | None = None

                def again() -> None:
                    assert handle is not None
                    self._timers.pop(handle, None)
                    self._enqueue(pending)

                handle = loop.call_later(delay, again)
                self._timers[handle] = pending
                return
        self._fail(pending, status)

    def _fail(self, pending: Pending, status: status_pb2.Status) -> None:
        if not pending.future.done():
            error = publish_error(status, event_id=pending.event_id, attempts=pending.attempts)
            pending.future.set_exception(error)
        self._release(pending)

    def _done(self, pending: Pending, result: Published) -> None:
        if not pending.future.done():
            pending.future.set_result(result)
        self._release(pending)

    def _release(self, pending: Pending) -> None:
        """The in-flight slot of a settled event is free; its key may send its next one."""
        pending.on_settled()
        if not self._batching.ordered_keys:
            return
        waiting = self._waiting.get(pending.key)
        if waiting is None:
            return
        if waiting:
            self._enqueue(waiting.popleft())
        else:
            del self._waiting[pending.key]


def _code(status: status_pb2.Status) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == status.code:
            return code
    return grpc.StatusCode.UNKNOWN


def _status(code: grpc.StatusCode, message: str) -> status_pb2.Status:
    return status_pb2.Status(code=code.value[0], message=message)
