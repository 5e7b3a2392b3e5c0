"""A remote member of a consumer group: a `Worker` whose handlers live in a client.

The gateway's Subscribe (gRPC) is one such member per stream; this module knows nothing
of the transport. A member is one `consumers.worker.Worker` of the group (the same pull
loop, settlement policy, dead letters, metrics and CONSUMER span per delivery as a Python
worker: one implementation), whose handler for each event type the member may receive
hands the decoded delivery to the client (`take()`) and waits for the client's settlement
(`settle()`):

- ACK: the handler returns, the worker acks (fire-and-forget, at-least-once, exactly as a
  Python handler's success).
- NAK(delay): `Retry(delay)`, a failed attempt naked with that delay (None: the group's
  backoff); after max_deliver attempts, dead letter.
- REJECT(reason): `Reject(reason)`, dead letter now.
- IN_PROGRESS: `in_progress` to JetStream, and this delivery's ack_wait starts again.
- No settlement within the group's ack_wait since the delivery was handed to the client
  (or its last IN_PROGRESS): the attempt fails (`Unsettled`: nak with backoff, dead letter
  at the last). The worker keeps a running handler alive in JetStream with in_progress, so
  this member enforces ack_wait itself (one sweep every `tick`, not a timer per delivery).

Every settlement gets exactly one `Result`, in the order received (`take()` returns those
whose predecessors are done too). APPLIED for ACK, NAK and REJECT is given once the
runtime settled the delivery, i.e. when its handling task ended: the ack or nak was sent
(fire-and-forget, like a Python worker's) or the dead letter stored and the event
terminated; for IN_PROGRESS once it was sent. EXPIRED: the delivery's attempt already
ended unsettled; ALREADY_SETTLED: settled before; UNKNOWN: never issued on this member;
INVALID: no action, or REJECT without a reason, or a negative delay. Being in order, the
results after an APPLIED still waiting for its dead letter (DLQ unavailable: the event is
held, see `consumers.handling`) wait with it.

Flow control: `credits` (the client's max_in_flight, raised by `add_credits`, capped by
the group's max_ack_pending) is the worker's concurrency, so at most `credits` deliveries
are handed to the client and unsettled; the worker's prefetch is min(credits,
PREFETCH_CAP): a member whose client stops reading holds at most credits + PREFETCH_CAP
events.

`close()` hands everything back at once: unsettled deliveries, prefetched ones and those
arriving while the worker's last pull requests end raise `HandBack` (nak without delay,
another member gets them at once; `WorkerStats.handed_back`). The naks wait for those
pull requests to end (`Worker.stop_pulling`, about a second): naked earlier, an event
would go straight back to this member's outstanding pulls, again and again until
max_deliver. A delivery handed back at
its last allowed attempt comes back once more and is dead-lettered by the runtime (the
group's last attempt ended unprocessed), as when a Python worker dies.

Metrics: those of a Python worker, except the lag gauges (many members share one
process; the group's lag is the consumer's, read with `nats consumer info` or Admin).

Trace: `RemoteDelivery.trace_context` is the W3C context (global propagator) current in
the handler, i.e. of the runtime's CONSUMER span (with a tracer) or of the event itself
(without one: then simply the event's own trace headers, the propagator's fields, which
is what injecting the context extracted from them gives, at a tenth of the cost).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import functools
import itertools
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.api import ConsumerConfig
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from consumers.delivery import Delivery, HandBack, Reject, Retry
from consumers.group import ConsumerGroup
from consumers.handling import WorkerStats
from consumers.worker import Worker
from observability import propagation

# Events prefetched per member at most (beside its credits). Measured (`python -m bench
# --scenario subscribe`, 256 credits): 256 drains ~20 % faster than 64 (fewer idle pull
# round trips); a member still holds at most 2 x credits events.
PREFETCH_CAP = 256
EXPIRED_KEPT = 4096  # ids of expired deliveries remembered (older ones: ALREADY_SETTLED)


class Action(enum.Enum):
    """What a client does with a delivery."""

    ACK = "ack"
    NAK = "nak"
    IN_PROGRESS = "in_progress"
    REJECT = "reject"


class Status(enum.Enum):
    """What became of a settlement (see the module docstring)."""

    APPLIED = "applied"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    ALREADY_SETTLED = "already_settled"
    INVALID = "invalid"


class Unsettled(Exception):
    """The client did not settle a delivery within the group's ack_wait: a failed attempt."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteDelivery:
    """One delivery handed to the client: `ack_id` settles it."""

    ack_id: str
    event: Message
    delivery: Delivery
    trace_context: Mapping[str, str]


@dataclass(slots=True, kw_only=True)
class Result:
    """The outcome of one settlement; `done` once it may be reported."""

    ack_id: str
    status: Status
    detail: str = ""
    done: bool = True


@dataclass(slots=True, kw_only=True)
class _Unsettled:
    future: asyncio.Future[BaseException | None]
    deadline: float
    delivery: Delivery
    task: asyncio.Task[Any] | None


@dataclass(slots=True)
class Batch:
    """What `take()` returns: deliveries and settlement results ready to send."""

    deliveries: list[RemoteDelivery] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.deliveries or self.results)


class RemoteMember:
    """One remote member of `group` receiving `event_types` (full name -> message class).

    `run()` runs its worker until `close()`; meanwhile `take()` gives what to send to the
    client, `settle()` (or `apply()`, its form without a coroutine per settlement) and
    `add_credits()` apply what the client says, and `wake` is set whenever something is
    ready to take. `consumer_config`: the group's consumer as its worker creates or updates
    it (default: `group`'s; the gateway gives its declaration's).
    """

    def __init__(
        self,
        group: ConsumerGroup,
        event_types: Mapping[str, type[Message]],
        nc: NATS,
        *,
        credits: int,
        current: Callable[[], NATS] | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        tick: float | None = None,
        consumer_config: ConsumerConfig | None = None,
    ) -> None:
        if credits < 1:
            raise ValueError(f"credits must be at least 1, not {credits}")
        # A copy with its own handler registry: the handlers are this member's. The group's
        # consumer keeps the settings of `group` (its declaration).
        self.group = dataclasses.replace(group)
        for message_type in event_types.values():
            self.group.handler(message_type)(self._handle)
        self.credits = min(credits, group.max_ack_pending)
        self.wake = asyncio.Event()
        self._ids = itertools.count(1)
        self._issued = 0
        self._unsettled: dict[int, _Unsettled] = {}
        self._expired: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._outbox: list[RemoteDelivery] = []
        self._results: collections.deque[Result] = collections.deque()
        self._closed = False  # no more deliveries to the client
        self._released = False  # the pulls ended: hand everything back now
        self._release: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._tick = tick if tick is not None else min(1.0, group.ack_wait / 4)
        self._trace_fields = None if tracer_provider is not None else propagation.fields()
        self.worker = Worker(
            self.group,
            nc,
            concurrency=self.credits,
            prefetch=min(self.credits, PREFETCH_CAP),
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            current=current,
            lag_gauges=False,
            consumer_config=consumer_config or group.consumer_config(),
        )

    @property
    def in_flight(self) -> int:
        """Deliveries handed to the client and not settled yet."""
        return len(self._unsettled)

    @property
    def stats(self) -> WorkerStats:
        """The worker's counts."""
        return self.worker.stats

    async def run(self) -> WorkerStats:
        """Run the member until `close()`, then drain its worker (handing everything back).

        Raises what `Worker.run` raises (GroupConfigError, ConnectionClosedError).
        """
        sweeper = asyncio.create_task(self._sweep())
        try:
            return await self.worker.run(self._stop)
        finally:
            sweeper.cancel()
            self.close()
            if self._release is not None:
                await self._release

    def close(self) -> None:
        """Send nothing more to the client, hand every delivery back as soon as the
        worker's pull requests ended, and stop the worker (see module doc)."""
        if self._closed:
            return
        self._closed = True
        self._outbox.clear()
        self._release = asyncio.create_task(self._hand_back())
        self.wake.set()

    async def _hand_back(self) -> None:
        try:
            await self.worker.stop_pulling()
        finally:
            self._released = True
            for unsettled in self._unsettled.values():
                if not unsettled.future.done():
                    unsettled.future.set_result(HandBack())
            self._unsettled.clear()
            self._stop.set()

    def add_credits(self, count: int) -> None:
        """Let the client hold `count` more unsettled deliveries (up to max_ack_pending)."""
        self.credits = min(self.credits + count, self.group.max_ack_pending)
        self.worker.resize(self.credits, min(self.credits, PREFETCH_CAP))

    def take(self, max_deliveries: int, max_bytes: int) -> Batch:
        """The results ready to send, in order, and deliveries: at most `max_deliveries`
        with at most `max_bytes` of payload (at least one, however big)."""
        batch = Batch()
        if self._outbox:
            size = count = 0
            for item in self._outbox:
                size += len(item.delivery.payload)
                if count and (count == max_deliveries or size > max_bytes):
                    break
                count += 1
            if count == len(self._outbox):
                batch.deliveries, self._outbox = self._outbox, []
            else:
                batch.deliveries = self._outbox[:count]
                del self._outbox[:count]
        while self._results and self._results[0].done:
            batch.results.append(self._results.popleft())
        return batch

    async def settle(
        self, ack_id: str, action: Action | None, *, delay: float | None = None, reason: str = ""
    ) -> None:
        """Apply one settlement; its `Result` follows through `take()`."""
        sending = self.apply(ack_id, action, delay=delay, reason=reason)
        if sending is not None:
            await sending

    def apply(
        self, ack_id: str, action: Action | None, *, delay: float | None = None, reason: str = ""
    ) -> Coroutine[Any, Any, None] | None:
        """`settle()` without a coroutine per settlement (it runs per delivery): applies it
        now, except IN_PROGRESS, whose sending it returns; the caller awaits that before
        applying the next settlement (results stay in order)."""
        number = int(ack_id) if ack_id.isdigit() and len(ack_id) < 20 else 0
        refused = self._refusal(number, action, delay, reason)
        if refused is not None:
            self._result(ack_id, *refused)
            return None
        unsettled = self._unsettled[number]
        if action is Action.IN_PROGRESS:
            # Moved to the end: the dict stays in deadline order for the sweep.
            del self._unsettled[number]
            unsettled.deadline = time.monotonic() + self.group.ack_wait
            self._unsettled[number] = unsettled
            return self._in_progress(ack_id, unsettled.delivery)
        del self._unsettled[number]
        outcome: BaseException | None = None
        if action is Action.NAK:
            outcome = Retry(delay)
        elif action is Action.REJECT:
            outcome = Reject(reason)
        result = Result(ack_id=ack_id, status=Status.APPLIED, done=False)
        self._results.append(result)
        unsettled.future.set_result(outcome)
        if unsettled.task is None:
            result.done = True
            self.wake.set()
        else:
            unsettled.task.add_done_callback(functools.partial(self._done, result))
        return None

    def _refusal(
        self, number: int, action: Action | None, delay: float | None, reason: str
    ) -> tuple[Status, str] | None:
        """Why settlement `number` cannot be applied; None: it can."""
        if action is None:
            return Status.INVALID, "no action"
        if action is Action.REJECT and not reason:
            return Status.INVALID, "REJECT needs a reason"
        if delay is not None and delay < 0:
            return Status.INVALID, "the delay must not be negative"
        if number in self._unsettled:
            return None
        if not 0 < number <= self._issued:
            return Status.UNKNOWN, "no such delivery on this stream"
        if number in self._expired:
            return Status.EXPIRED, "not settled within ack_wait: delivered again"
        return Status.ALREADY_SETTLED, ""

    async def _in_progress(self, ack_id: str, delivery: Delivery) -> None:
        with contextlib.suppress(NatsError, TimeoutError):
            # Lost with a connection: the worker's own keep-alive (every ack_wait/2
            # while a handler runs) holds the event in JetStream anyway.
            await delivery.in_progress()
        self._result(ack_id, Status.APPLIED, "")

    def _done(self, result: Result, _: object) -> None:
        result.done = True
        self.wake.set()

    def _result(self, ack_id: str, status: Status, detail: str) -> None:
        self._results.append(Result(ack_id=ack_id, status=status, detail=detail))
        self.wake.set()

    async def _handle(self, event: Message, delivery: Delivery) -> None:
        """The handler of every event type: hand it to the client, await its settlement."""
        if self._released:
            raise HandBack
        number = next(self._ids)
        self._issued = number
        future: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self._unsettled[number] = _Unsettled(
            future=future,
            deadline=time.monotonic() + self.group.ack_wait,
            delivery=delivery,
            task=asyncio.current_task(),
        )
        if not self._closed:
            if self._trace_fields is None:
                trace_context: Mapping[str, str] = propagation.trace_headers()
            else:
                raw = delivery.raw_headers
                trace_context = {f: raw[f] for f in self._trace_fields if f in raw}
            self._outbox.append(
                RemoteDelivery(
                    ack_id=str(number),
                    event=event,
                    delivery=delivery,
                    trace_context=trace_context,
                )
            )
            self.wake.set()
        try:
            outcome = await future
        finally:
            self._unsettled.pop(number, None)
        if outcome is not None:
            raise outcome

    async def _sweep(self) -> None:
        """Fail the attempts of deliveries unsettled for ack_wait (oldest deadline first)."""
        while True:
            await asyncio.sleep(self._tick)
            if self._closed:
                return  # everything held is about to be handed back, not failed
            now = time.monotonic()
            overdue = list(_overdue(self._unsettled, now))
            for number in overdue:
                unsettled = self._unsettled.pop(number)
                self._expired[number] = None
                if len(self._expired) > EXPIRED_KEPT:
                    self._expired.popitem(last=False)
                if not unsettled.future.done():
                    wait = self.group.ack_wait
                    unsettled.future.set_result(
                        Unsettled(f"not settled within ack_wait ({wait:g}s)")
                    )
            if overdue and self._outbox:
                # Not taken by the client's stream yet (it stopped reading): their attempt
                # ended, so they are not sent any more.
                ended = {str(n) for n in overdue}
                self._outbox = [d for d in self._outbox if d.ack_id not in ended]


def _overdue(unsettled: Mapping[int, _Unsettled], now: float) -> Iterator[int]:
    for number, entry in unsettled.items():
        if entry.deadline > now:
            return
        yield number
