"""The worker: pulls a group's events from JetStream and runs their handlers.

Pulling: one inbox subscription (`<inbox>.*`) and pull requests on
`$JS.API.CONSUMER.MSG.NEXT.<stream>.<group>`, each with its own reply subject (where its
end comes as a status message; the events come on their own subjects) and an expiry
(`pull_expires`). The worker keeps exactly as many events requested as it has free
handler slots plus `prefetch` (default: 3 x concurrency) minus the events it holds or has
requested. A lone event goes to a handler as soon as it is stored (no batch to fill).
Prefetched events wait here for a free slot, kept alive with in_progress like running ones.
Prefetch keeps the pull pipeline full, so fast handlers are not starved by round trips;
the price: a burst can go mostly to one worker, and a killed worker's prefetched events
wait ack_wait before another worker gets them. `prefetch=0` trades throughput for strict
fairness (slow handlers). nats-py's `fetch` is not used: it waits for a full batch or its
timeout, and a long-poll it abandons keeps taking events.

What happens to each delivery (ack, retry, dead letter; its span and metrics) is
`consumers.handling`. An event held because its dead letter cannot be stored (DLQ
unavailable) gives its handler slot back but still counts among the events the worker
holds (running, prefetched, held: at most concurrency + prefetch), kept alive likewise.
While a handler runs longer than ack_wait/2, the worker sends `in_progress` every
ack_wait/2.

Metrics: the consumer's lag and ack-pending counts are read from JetStream every
`metrics_interval` seconds (only with a meter provider, and not with `lag_gauges=False`:
many workers in one process, where a gauge would only report the first).

Stuck slots: when every handler slot has been busy for ack_wait with no handler finishing
(hung handlers, until the group's handler timeout cancels them), the prefetched events are
handed back (nak without delay: another worker of the group takes them at once) and the
worker prefetches no more until a slot frees up. Each hand-back counts as a delivery
toward max_deliver, so an event already at its last delivery is kept for a slot of this
worker instead (handed back, it would be dead-lettered unhandled, or lost past the
consumer's limit).

Resilience: a pull request that got no answer by its expiry (plus a second) is written
off, so after a reconnect or a nats-server restart the worker simply asks again; "no
responders" or a deleted consumer makes it create the consumer again. In a cluster, a
pull ended by "409 Leadership Change" (the consumer's leader moved) is simply made again
at once, to the new leader; a pull lost with a killed leader is written off at its expiry
like any other. A connection that
nats-py closed for good (it does not reconnect after a server error, e.g. a message over
max_payload) is replaced with `connect()` (one warning, not one per pull): new
connection, inbox subscription and consumer set up again; events held on the old one come
back after ack_wait. A worker given `current` instead (the gateway's Subscribe: the
gateway's supervised connection, which the gateway replaces itself) moves onto whatever
connection `current()` returns once it is a new, open one, and never closes it. Without
either, `run()` raises ConnectionClosedError then. `run()` returns
after `stop` is set and the drain is done: no new requests, the outstanding ones answered
or expired, in-flight and prefetched events handled and acknowledged. After `drain_timeout`
(default: the group's ack_wait) running handlers are cancelled (their events come back
after ack_wait) and prefetched events not yet started are nak'ed (back at once).

`resize()` raises the concurrency (and sets the prefetch) while the worker runs: a remote
member's handler slots are its client's credits, which the client may raise.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError
from nats.errors import Error as NatsError
from nats.js.api import ConsumerConfig
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from consumers import consumer
from consumers.group import ConsumerGroup, GroupConfigError
from consumers.handling import DeliveryHandler, WorkerStats
from jetgate import wire
from observability import messaging
from observability.metrics import ConsumeMetrics

log = logging.getLogger("jetgate.consumers")

SETUP_RETRY = 1.0  # s between attempts to create the consumer while JetStream is away
CURRENT_RETRY = 0.1  # s between looks at `current()` while its owner replaces the connection
# Default prefetch per handler slot. Measured (`python -m bench --scenario consume`, no-op
# handler, concurrency 16): 1x drains at 0.86-0.93x a plain fetch(100) loop, 2x 0.85-0.92x,
# 3x 0.98-1.15x with less CPU per event (fewer pull round trips).
PREFETCH_FACTOR = 3


@dataclass(slots=True)
class _Pull:
    credits: int
    deadline: float


@dataclass(slots=True)
class _Running:
    msg: Msg
    last_progress: float = field(default_factory=time.monotonic)


class Worker:
    """Runs `group`'s handlers in this process over connection `nc` (owned by the caller).

    `connect` makes a new connection when nats-py closed `nc` for good; the worker owns
    (and closes) the connections it makes. `current` (instead of `connect`) gives the
    connection its owner holds now: the worker follows it and never closes it.
    `consumer_config`: the consumer the worker creates or updates (default: `group`'s).

    `ready` is set once the consumer is set up and the first pull request is out: from then
    on the group's events flow to this worker.
    """

    def __init__(
        self,
        group: ConsumerGroup,
        nc: NATS,
        *,
        concurrency: int | None = None,
        prefetch: int | None = None,
        pull_expires: float = 1.0,
        drain_timeout: float | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        metrics_interval: float = 5.0,
        connect: Callable[[], Awaitable[NATS]] | None = None,
        current: Callable[[], NATS] | None = None,
        lag_gauges: bool = True,
        consumer_config: ConsumerConfig | None = None,
    ) -> None:
        self.group = group
        # Given for a remote member: its group carries handlers its declaration has not (they
        # would change the consumer's metadata).
        self._consumer_config = consumer_config
        self._stats = WorkerStats()
        self._nc = nc
        self._connect = connect
        self._current = current
        self._lag_gauges = lag_gauges
        self._own_connection: NATS | None = None
        self._sub: Subscription | None = None
        self._js = nc.jetstream()
        self._concurrency = concurrency or group.concurrency
        self._prefetch = PREFETCH_FACTOR * self._concurrency if prefetch is None else prefetch
        self._expires = pull_expires
        self._drain_timeout = group.ack_wait if drain_timeout is None else drain_timeout
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{group.stream}.{group.name}"
        self._inbox = nc.new_inbox()
        self._ids = itertools.count()
        self._pulls: dict[str, _Pull] = {}
        self._running: dict[asyncio.Task[None], _Running] = {}
        # Events whose dead letter cannot be stored yet (`handling`): no handler slot.
        self._held: dict[asyncio.Task[None], _Running] = {}
        self._waiting: collections.deque[_Running] = collections.deque()
        self._wake = asyncio.Event()
        self._needs_setup = True
        self._reconnecting = False
        self._set_up_once = False
        self._stopping = False
        self._tick = min(0.25, group.ack_wait / 4)
        self._slot_started = time.monotonic()
        self._stalled = False
        self._pending: tuple[int, int] | None = None
        self._metrics = ConsumeMetrics(
            meter_provider,
            group=group.name,
            stream=group.stream,
            pending=lambda: self._pending,
            gauges=lag_gauges,
        )
        self._handler = DeliveryHandler(
            group,
            nc,
            stats=self._stats,
            metrics=self._metrics,
            tracer=messaging.tracer(tracer_provider),
            on_hold=self._hold,
        )
        self._metrics_interval = metrics_interval
        self._pending_read: asyncio.Task[None] | None = None
        self._pending_read_at = 0.0
        self.ready = asyncio.Event()

    @property
    def stats(self) -> WorkerStats:
        """The counts so far (`in_flight`: handlers running plus prefetched events)."""
        self._stats.in_flight = len(self._running) + len(self._waiting) + len(self._held)
        return self._stats

    async def run(self, stop: asyncio.Event) -> WorkerStats:
        """Handle events until `stop` is set, then drain; returns the stats.

        Raises GroupConfigError when JetStream refuses the group's consumer.
        """
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_message)
        stop_watch = asyncio.create_task(self._wake_on(stop))
        try:
            while not stop.is_set():
                if self._nc.is_closed and not await self._reconnect(stop):
                    continue
                if self._needs_setup and not await self._set_up_again():
                    await _wait(stop, SETUP_RETRY)
                    continue
                self._expire()
                await self._hand_back()
                await self._request()
                await self._keep_alive()
                self._read_pending()
                self._wake.clear()
                await _wait(self._wake, self._tick)
            await self._drain()
        finally:
            stop_watch.cancel()
            if self._pending_read is not None:
                self._pending_read.cancel()
            with contextlib.suppress(NatsError):
                await self._sub.unsubscribe()
            if self._own_connection is not None:
                with contextlib.suppress(NatsError, TimeoutError):
                    await self._own_connection.close()
        return self.stats

    async def _reconnect(self, stop: asyncio.Event) -> bool:
        """Replace a connection nats-py closed for good (it does not reconnect after a
        server error, e.g. a message over max_payload); False: not yet, try again.

        Without `connect` there is nothing to replace it with: ConnectionClosedError.
        Events held on the closed connection cannot be settled any more; JetStream
        redelivers them after ack_wait.
        """
        if self._current is not None:
            nc = self._current()
            if nc is self._nc or nc.is_closed:
                await _wait(stop, CURRENT_RETRY)  # its owner is replacing it
                return False
            await self._use(nc, owned=False)
            log.warning("group %s: moved onto the new NATS connection", self.group.name)
            return True
        if self._connect is None:
            log.error("group %s: NATS closed the connection; no way to reconnect", self.group.name)
            raise ConnectionClosedError
        if not self._reconnecting:
            self._reconnecting = True
            log.warning(
                "group %s: NATS closed the connection (%r); connecting again",
                *(self.group.name, self._nc.last_error),
            )
        try:
            nc = await self._connect()
        except (NatsError, OSError, TimeoutError) as exc:
            log.warning("group %s: cannot connect to NATS (%r); retrying", self.group.name, exc)
            await _wait(stop, SETUP_RETRY)
            return False
        await self._use(nc, owned=True)
        self._reconnecting = False
        log.warning("group %s: connected to NATS again", self.group.name)
        return True

    async def _use(self, nc: NATS, *, owned: bool) -> None:
        """Pull and settle over `nc` from now on, set up again (closing the worker's own old
        connection)."""
        if self._own_connection is not None:
            with contextlib.suppress(NatsError, TimeoutError):
                await self._own_connection.close()
        self._nc = nc
        self._own_connection = nc if owned else None
        self._js = nc.jetstream()
        self._handler.use(nc)
        self._inbox = nc.new_inbox()
        self._pulls.clear()
        self._waiting.clear()  # their acks went with the old connection
        self._sub = await nc.subscribe(f"{self._inbox}.*", cb=self._on_message)
        self._needs_setup = True

    async def stop_pulling(self) -> None:
        """Ask JetStream for no more events, and return once every pull request out has
        ended (answered or expired: about `pull_expires` + 1 s at most). Only then is an
        event naked by this worker sure to go to another worker, not back to this one."""
        self._stopping = True
        while True:
            self._expire()
            if not self._pulls:
                return
            self._wake.clear()
            await _wait(self._wake, self._tick)

    def resize(self, concurrency: int, prefetch: int | None = None) -> None:
        """Run up to `concurrency` handlers at once from now on (never fewer than now), and
        prefetch `prefetch` events (None: as set before)."""
        self._concurrency = max(self._concurrency, concurrency)
        if prefetch is not None:
            self._prefetch = prefetch
        while self._waiting and len(self._running) < self._concurrency:
            self._start(self._waiting.popleft())
        self._wake.set()

    def _read_pending(self) -> None:
        """Refresh the lag gauges in the background every `metrics_interval` s."""
        now = time.monotonic()
        if not self._lag_gauges or not self._metrics.enabled:
            return
        if now - self._pending_read_at < self._metrics_interval:
            return
        if self._pending_read is None or self._pending_read.done():
            self._pending_read_at = now
            self._pending_read = asyncio.create_task(self._read_pending_now())

    async def _read_pending_now(self) -> None:
        try:
            info = await self._js.consumer_info(self.group.stream, self.group.name)
        except (NatsError, TimeoutError):
            return  # the gauges keep their last value; the pull loop reports the trouble
        self._pending = (info.num_pending or 0, info.num_ack_pending or 0)

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _set_up_again(self) -> bool:
        """`_setup`; refused settings end `run()` only at start, later they are retried
        (a consumer an operator deleted and JetStream's recovery should not kill workers)."""
        try:
            return await self._setup()
        except GroupConfigError as exc:
            if not self._set_up_once:
                raise
            log.error("%s; retrying", exc)
            return False

    async def _setup(self) -> bool:
        """Create or update the group's consumer (and the DLQ stream); False: try later."""
        if not await consumer.ensure(self._js, self.group, self._consumer_config):
            return False
        self._needs_setup = False
        self._set_up_once = True
        return True

    async def _on_message(self, msg: Msg) -> None:
        status = msg.headers.get(wire.STATUS) if msg.headers else None
        if status:
            if status == wire.STATUS_IDLE_HEARTBEAT:
                return
            # A status ends the pull request whose reply subject it came to.
            self._pulls.pop(msg.subject[len(self._inbox) + 1 :], None)
            description = (msg.headers or {}).get(wire.STATUS_DESCRIPTION, "")
            if status == wire.STATUS_NO_RESPONDERS or "Consumer Deleted" in description:
                self._needs_setup = True
            elif status == wire.STATUS_CONFLICT and wire.LEADERSHIP_CHANGE in description:
                # The consumer's leader moved (a cluster): pull from the new one at once;
                # acks lost in the move come back as redeliveries.
                log.info("group %s: consumer leader changed; pulling again", self.group.name)
            elif status not in (wire.STATUS_NO_MESSAGES, wire.STATUS_REQUEST_TIMEOUT):
                log.warning("group %s: pull ended: %s %s", self.group.name, status, description)
            self._wake.set()
            return
        self._metrics.received()
        # Events arrive on their own subjects; JetStream fills pull requests oldest first.
        for token, pull in self._pulls.items():
            pull.credits -= 1
            if pull.credits <= 0:
                del self._pulls[token]
            break
        if len(self._running) < self._concurrency:
            self._start(_Running(msg))
        else:
            self._waiting.append(_Running(msg))

    def _start(self, running: _Running) -> None:
        self._slot_started = time.monotonic()
        self._stalled = False
        task = asyncio.create_task(self._handler.handle(running.msg))
        self._running[task] = running
        task.add_done_callback(self._finished)

    def _hold(self, task: asyncio.Task[Any]) -> None:
        """The event of `task` is held for its dead letter: its handler slot is free."""
        running = self._running.pop(task, None)
        if running is None:
            return
        self._held[task] = running
        if self._waiting:
            self._start(self._waiting.popleft())
        self._wake.set()

    def _finished(self, task: asyncio.Task[None]) -> None:
        if self._running.pop(task, None) is None:
            del self._held[task]
        if self._waiting and len(self._running) < self._concurrency:
            self._start(self._waiting.popleft())
        if not task.cancelled() and task.exception() is not None:
            log.error("group %s: worker error", self.group.name, exc_info=task.exception())
        self._wake.set()

    def _expire(self) -> None:
        now = time.monotonic()
        for token in [t for t, p in self._pulls.items() if p.deadline < now]:
            del self._pulls[token]

    async def _request(self) -> None:
        if self._stopping or self._needs_setup:
            return
        requested = sum(p.credits for p in self._pulls.values())
        # Every slot stuck: prefetching more would only hold events another worker can take.
        room = self._concurrency + (0 if self._stalled else self._prefetch)
        free = room - len(self._running) - len(self._waiting) - len(self._held) - requested
        # Ask in halves under load (fewer requests), at once when nothing is requested.
        if free <= 0 or (requested and free < max(1, room // 2)):
            return
        token = str(next(self._ids))
        request = {"batch": free, "expires": int(self._expires * 1e9)}
        try:
            await self._nc.publish(
                self._next_subject, json.dumps(request).encode(), reply=f"{self._inbox}.{token}"
            )
        except NatsError as exc:
            log.warning("group %s: pull request failed: %r", self.group.name, exc)
            return
        self._pulls[token] = _Pull(free, time.monotonic() + self._expires + 1.0)
        self.ready.set()

    async def _hand_back(self) -> None:
        """When every handler slot has been busy for ack_wait with no handler finishing,
        nak the prefetched events (no delay: another worker of the group takes them) and
        prefetch no more until a slot frees up."""
        if len(self._running) < self._concurrency:
            return
        busy = time.monotonic() - self._slot_started
        if busy < self.group.ack_wait or (self._stalled and not self._waiting):
            return
        if not self._stalled:
            self._stalled = True
            log.warning(
                "group %s: all %d handler slots busy for %.0fs; handing %d prefetched events "
                "back to the group",
                *(self.group.name, self._concurrency, busy, len(self._waiting)),
            )
        # An event is handed back only while its next delivery still runs its handler
        # (deliveries up to `max_deliver`); one at its last delivery stays here for a slot:
        # handing it back would dead-letter it unhandled or, past the consumer's limit, lose it.
        kept = collections.deque(
            r for r in self._waiting if r.msg.metadata.num_delivered >= self.group.max_deliver
        )
        while self._waiting:
            running = self._waiting.popleft()
            if running.msg.metadata.num_delivered >= self.group.max_deliver:
                continue
            self._stats.handed_back += 1
            with contextlib.suppress(NatsError):
                await running.msg.nak()
        self._waiting = kept

    async def _keep_alive(self) -> None:
        now = time.monotonic()
        self._handler.expire_overdue(now)
        for running in [*self._running.values(), *self._waiting, *self._held.values()]:
            if now - running.last_progress >= self.group.ack_wait / 2:
                running.last_progress = now
                with contextlib.suppress(NatsError):
                    await running.msg.in_progress()

    async def _drain(self) -> None:
        self._stopping = True
        deadline = time.monotonic() + self._drain_timeout
        while (
            self._pulls or self._running or self._waiting or self._held
        ) and time.monotonic() < deadline:
            self._expire()
            await self._keep_alive()
            self._wake.clear()
            await _wait(self._wake, self._tick)
        while self._waiting:  # never started: hand them to another worker now
            with contextlib.suppress(NatsError):
                await self._waiting.popleft().msg.nak()
        tasks = [*self._running, *self._held]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(NatsError, TimeoutError):
            await self._nc.flush(timeout=2)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Until `event` is set or `seconds` passed (a timer, not a task: this runs per event)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
