"""The gateway's NATS connection: its whole life, and the health it implies.

`NatsSupervisor` owns the current connection. Health is SERVING only while all hold:

- connected: nats-py is connected (not disconnected, reconnecting or closed);
- ready: the declared streams are reconciled on this connection (a restarted server may
  have lost them, e.g. with memory storage);
- storing: the last health check passed. A watchdog runs the check every
  `check_interval` s (setting `health_interval`, default 2 s): `gateway.health_check`
  stores a 1 KiB probe in the gateway's own stream, so a stalled server or exhausted
  storage fails it. Health turns NOT_SERVING at the first check that fails and SERVING
  again at the first that passes; each change is logged once. The probe queues behind
  the publishes on the same connection, so `health_timeout` must exceed the
  acknowledgement latency at peak load. Health covers both the overall ("") and the
  `jetgate.v1.EventGateway` service: publishing is the gateway's whole job.

Lifecycle:

- Disconnected: NOT_SERVING at once and every pending publish fails as `unavailable`;
  nats-py reconnects by itself (for ever); once reconnected the streams are reconciled
  again (retried with backoff while it fails), then SERVING.
- Closed for good: nats-py does not reconnect after the server closes the connection for
  an error (e.g. "maximum payload exceeded": one oversize message would otherwise disable
  the gateway until restarted), nor when its reconnect attempts run out. The supervisor
  then makes a new connection (retried with backoff, for ever), moves the listeners (the
  publisher) onto it, reconciles the streams, and turns SERVING again. The replacement is
  logged once when it starts and once when it is done, not per attempt.

Access (jetgate/nats_options.py: servers, credentials, TLS): wrong credentials or a failed
TLS handshake stop the start-up at once with `NatsRefused` (exit code 1) naming the cause.
NATS reports a permission violation (the gateway's user may not publish on a subject, or
may not use the JetStream API) only to the error callback, and what waits for an answer
would wait for its timeout. So: a violation while the gateway starts (stream
reconciliation, the health probe) fails the start-up with `NatsRefused` naming the
subject; a violation later for publishing on an event's subject fails the publishes
pending on that subject at once (`ConnectionListener.deny`: PERMISSION_DENIED to the
caller).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from gateway.health_check import StoreCheck
from jetgate import nats_options
from jetgate.nats_options import NatsOptions, NatsRefused
from jetgate.urls import redact

VIOLATION_LOG_EVERY = 10.0  # s

log = logging.getLogger("jetgate.gateway")

# Replacement and reconciliation retries back off from the first to the last delay (s).
FIRST_RETRY_DELAY = 0.1
LAST_RETRY_DELAY = 5.0


class ConnectionListener(Protocol):
    """What follows the connection (the publisher)."""

    async def rebind(self, nc: NATS) -> None:
        """Move onto `nc`, the connection replacing a closed one."""

    def fail_pending(self, reason: str) -> None:
        """Fail what awaits an answer on a connection that is gone."""

    def deny(self, subject: str, reason: str) -> None:
        """Fail what awaits an answer to a publish on `subject`: NATS refused it."""


class NatsSupervisor:
    """Owns the gateway's NATS connection: connects, recovers, replaces, reports health.

    `prepare(nc)` reconciles what the gateway needs on a (new or reconnected) connection;
    `on_serving(serving)` is told every change of health.
    """

    def __init__(
        self,
        nats: NatsOptions | str,
        *,
        name: str,
        prepare: Callable[[NATS], Awaitable[None]],
        on_serving: Callable[[bool], Awaitable[None]],
        check: StoreCheck,
        check_interval: float = 2.0,
    ) -> None:
        self._options = (
            nats if isinstance(nats, NatsOptions) else nats_options.options({"nats_url": nats})
        )
        # Set while the gateway starts: a permission violation then fails the start-up.
        self._starting: asyncio.Future[Any] | None = None
        self._name = name
        self._prepare = prepare
        self._on_serving = on_serving
        self._check = check
        self._check_interval = check_interval
        # Why the last health check failed; empty when it passed.
        self._problem = ""
        self._checked = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None
        self._nc: NATS | None = None
        self._listeners: list[ConnectionListener] = []
        self._connected = False
        self._ready = False
        self._watching = False
        self._serving = False
        self._stopping = False
        self._recovery: asyncio.Task[None] | None = None
        self._last_error = ""
        # Permission violations come from callers' events: logged at most once per
        # VIOLATION_LOG_EVERY seconds (with the count left out), so a client cannot flood the log.
        self._violations_logged_at = -VIOLATION_LOG_EVERY
        self._violations_unlogged = 0

    @property
    def nc(self) -> NATS:
        """The current connection (a new object after a replacement: do not keep it)."""
        if self._nc is None:
            raise RuntimeError("not connected yet: call connect() first")
        return self._nc

    @property
    def serving(self) -> bool:
        """Whether the gateway can store events now (what health says)."""
        return self._serving

    async def connect(self, within: float) -> NATS:
        """Connect and prepare (raises on failure: the gateway does not start without NATS)."""
        try:
            nc = await self._new_connection(within)
        except TimeoutError as exc:
            raise ConnectionError(str(exc)) from None
        self._nc = nc
        self._connected = True
        self._starting = asyncio.get_running_loop().create_future()
        try:
            await self._prepare_or_refuse(nc, self._starting)
        except BaseException:
            self._nc = None  # first: closing it must not start a replacement
            self._connected = False
            with contextlib.suppress(NatsError, asyncio.TimeoutError):
                await nc.close()
            raise
        finally:
            self._starting = None
        self._ready = True
        return nc

    async def _prepare_or_refuse(self, nc: NATS, violation: asyncio.Future[Any]) -> None:
        preparing: asyncio.Future[Any] = asyncio.ensure_future(self._prepare_connection(nc))
        try:
            await asyncio.wait([preparing, violation], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not preparing.done():
                preparing.cancel()
                with contextlib.suppress(BaseException):
                    await preparing
        if preparing.done() and not preparing.cancelled():
            preparing.result()  # raises what failed it
            return
        raise NatsRefused(
            f"NATS denied the gateway's user at {redact(self._options.url)}: "
            f"{violation.result()} (grant it the JetStream API and its streams' subjects)"
        )

    def attach(self, listener: ConnectionListener) -> None:
        """Have `listener` follow disconnections and replacements of the connection."""
        self._listeners.append(listener)

    async def watch(self) -> None:
        """Start reporting health and checking NATS (call once the gateway listens)."""
        self._watching = True
        if self._nc is not None:  # SERVING only once a first check passed
            self._record(self._nc, await self._run_check(self._nc))
        self._serving = self._can_serve()
        await self._on_serving(self._serving)  # the first report, whatever it says
        self._watchdog = asyncio.create_task(self._watch())

    async def unwatch(self) -> None:
        """Report NOT_SERVING from now on (the gateway is stopping; recovery goes on)."""
        self._watching = False
        await self._update()

    async def close(self) -> None:
        """Stop recovering and drain the connection."""
        # Set before cancelling: the watchdog and recovery loops also end on it. On Python
        # 3.11 a cancellation that arrives as an `asyncio.wait_for` inside nats-py gets its
        # reply is lost (the reply is returned instead; gh-86296), and a loop that only
        # relied on cancel() would then run on and close() would wait for it for ever.
        self._stopping = True
        await self.unwatch()
        for task in (self._watchdog, self._recovery):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(NatsError, asyncio.TimeoutError):
                await self._nc.drain()

    async def _new_connection(self, within: float) -> NATS:
        nc = NATS()
        # nats-py annotates these durations as int but takes seconds as float.
        durations: dict[str, Any] = {"reconnect_time_wait": 0.5, "connect_timeout": within}
        options = self._options

        # Callbacks know their connection: those of a replaced one are ignored.
        async def disconnected() -> None:
            await self._on_disconnected(nc)

        async def reconnected() -> None:
            await self._on_reconnected(nc)

        async def closed() -> None:
            await self._on_closed(nc)

        try:
            await nats_options.connect(
                nc,
                options,
                within=within,
                name=self._name,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                closed_cb=closed,
                error_cb=self._on_error,
                **durations,
            )
        except BaseException:
            with contextlib.suppress(NatsError, asyncio.TimeoutError):
                await nc.close()
            raise
        return nc

    def _can_serve(self) -> bool:
        return self._watching and self._connected and self._ready and not self._problem

    async def _update(self) -> None:
        serving = self._can_serve()
        if serving != self._serving:
            self._serving = serving
            await self._on_serving(serving)

    def _current(self, nc: NATS) -> bool:
        """Whether a callback of `nc` still matters (not an old connection, not stopping)."""
        return nc is self._nc and not self._stopping

    async def _on_disconnected(self, nc: NATS) -> None:
        if not self._current(nc) or not self._connected:
            return
        log.warning("NATS connection lost; NOT_SERVING until it is back")
        self._connected = False
        self._ready = False
        for listener in self._listeners:
            listener.fail_pending("NATS connection lost before JetStream acknowledged")
        await self._update()

    async def _on_reconnected(self, nc: NATS) -> None:
        if not self._current(nc):
            return
        self._last_error = ""
        self._connected = True
        self._ready = False
        log.info("NATS reconnected; reconciling streams")
        # A recovery under way (a replacement, or a reconciliation that outlived a short
        # disconnection) goes on and ends with the streams reconciled on `nc`.
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.ensure_future(self._reconcile(nc))

    async def _on_closed(self, nc: NATS) -> None:
        if not self._current(nc):
            return
        reason = repr(nc.last_error) if nc.last_error is not None else "no error given"
        log.error("NATS closed the connection for good (%s); replacing it", reason)
        self._connected = False
        self._ready = False
        for listener in self._listeners:
            listener.fail_pending("NATS connection closed before JetStream acknowledged")
        await self._update()
        self._recover(self._replace())

    def _recover(self, work: Awaitable[None]) -> None:
        """Run `work` as the one recovery under way (cancelling any earlier one)."""
        if self._recovery is not None:
            self._recovery.cancel()
        self._recovery = asyncio.ensure_future(work)

    async def _reconcile(self, nc: NATS) -> None:
        delay = FIRST_RETRY_DELAY
        attempt = 0
        while nc.is_connected and not self._stopping:
            attempt += 1
            try:
                await self._prepare_connection(nc)
            except Exception as exc:
                log.warning("stream reconciliation failed (attempt %d): %s", attempt, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, LAST_RETRY_DELAY)
                continue
            self._ready = True
            self._checked.set()  # check at once rather than wait for the next round
            await self._update()
            return

    async def _replace(self) -> None:
        delay = FIRST_RETRY_DELAY
        attempt = 0
        while not self._stopping:
            attempt += 1
            try:
                nc = await self._new_connection(LAST_RETRY_DELAY)
            except (OSError, TimeoutError, NatsError, NatsRefused) as exc:
                if attempt == 1:
                    log.warning(
                        "cannot connect to NATS yet (%s); retrying with backoff", redact(repr(exc))
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, LAST_RETRY_DELAY)
                continue
            if self._stopping:  # close() came while connecting
                with contextlib.suppress(NatsError, asyncio.TimeoutError):
                    await nc.close()
                return
            self._nc = nc
            self._connected = True
            for listener in self._listeners:
                await listener.rebind(nc)
            await self._reconcile(nc)
            if self._ready:
                log.info("NATS connection replaced (after %d attempt(s)); SERVING again", attempt)
            return

    async def _watch(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._check_interval):
                    await self._checked.wait()
            self._checked.clear()
            nc = self._nc
            if nc is None or not self._connected or not nc.is_connected:
                continue  # the disconnection already made health NOT_SERVING
            self._record(nc, await self._run_check(nc))
            await self._update()

    async def _run_check(self, nc: NATS) -> str:
        try:
            return await self._check.run(nc)
        except Exception as exc:  # the watchdog must outlive any surprise
            return f"health check failed: {exc!r}"

    def _record(self, nc: NATS, problem: str) -> None:
        """Keep the outcome of a check of `nc`; log a change."""
        if nc is not self._nc or problem == self._problem:
            return
        if problem:
            log.warning("health check failed: %s; NOT_SERVING until it passes", problem)
        else:
            log.info("health check passes again")
        self._problem = problem

    async def _prepare_connection(self, nc: NATS) -> None:
        await self._prepare(nc)
        await self._check.prepare(nc)

    async def _on_error(self, exc: Exception) -> None:
        if (violation := nats_options.permission_violation(exc)) is not None:
            operation, subject = violation
            reason = f"NATS permissions violation for {operation} on {subject!r}"
            now = asyncio.get_running_loop().time()
            if now - self._violations_logged_at >= VIOLATION_LOG_EVERY:
                more = self._violations_unlogged
                log.error(
                    "%s (the gateway's NATS user may not do that)%s",
                    reason,
                    f"; {more} more since the last one logged" if more else "",
                )
                self._violations_logged_at, self._violations_unlogged = now, 0
            else:
                self._violations_unlogged += 1
            if self._starting is not None and not self._starting.done():
                self._starting.set_result(reason)
            if operation == "publish":
                for listener in self._listeners:
                    listener.deny(subject, "the gateway's NATS user may not publish there")
            return
        # While NATS is down the client reports every reconnect attempt: say it once.
        if repr(exc) != self._last_error:
            self._last_error = repr(exc)
            log.warning("NATS: %s", redact(repr(exc)))
