"""Limits that keep one client from impairing the gateway for the others.

Transport (`server_options`):
- Messages up to `MAX_MESSAGE_BYTES` (64 MiB) each way.
- Keepalive: clients commonly ping an idle connection every 10 s, also without calls (Go's
  `keepalive.ClientParameters{Time: 10s, PermitWithoutStream: true}`, Java's
  `keepAliveTime(10, SECONDS)`). gRPC's default server policy allows one ping per 5 min
  without data and answers the third early one with GOAWAY `too_many_pings`, which killed
  idle PublishStreams after 30 s. The server accepts pings every `MIN_CLIENT_PING_MS` or
  slower, with or without calls, and sends its own every `KEEPALIVE_TIME_MS` to find dead
  peers (one that does not answer within `KEEPALIVE_TIMEOUT_MS` is disconnected and its
  calls end, so their requests stop holding memory).
- At most `MAX_CONCURRENT_STREAMS` calls at once per connection (clients queue the rest): a
  backstop, high enough that a client with hundreds of calls on one channel is not refused
  (at 128, the bench's 256 concurrent Publish calls on one channel got RST_STREAM
  REFUSED_STREAM, i.e. UNAVAILABLE, for a quarter of them whenever the peers' view of the
  limit raced).
- A connection that has not completed the HTTP/2 handshake (client preface and SETTINGS)
  within `HANDSHAKE_TIMEOUT_MS` is closed, so half-open sockets do not pile up; one with no
  call for `MAX_CONNECTION_IDLE_MS` gets a graceful GOAWAY (clients reconnect on demand).

Requests (`RequestGuard`, a server interceptor, innermost so server spans see its refusals):
- Bytes that do not parse as the method's request message are INVALID_ARGUMENT naming only
  the expected message type, logged in one bounded line (grpc's own handling answered
  UNKNOWN with Python class names and logged an 8-line traceback per request).
- Memory: the serialized size of the requests being processed at once, over all calls, is
  bounded by `max_inflight_request_bytes` (`InFlightBudget`). A Publish or PublishBatch that
  does not fit is refused at once with RESOURCE_EXHAUSTED before it is parsed (waiting would
  hold its bytes while others pile up; the client retries with backoff, same event ids). A
  PublishStream message waits for room instead (reading pauses, so HTTP/2 flow control holds
  the client back, like `stream_window`); its bytes count until its response is sent. One
  request larger than the whole budget is RESOURCE_EXHAUSTED in either case. The budget
  counts serialized bytes; parsing and publishing cost a few times that in process memory.
  What it cannot bound: gRPC receives a whole message before any handler or interceptor
  sees it, so every call being received holds its bytes (up to 64 MiB) whatever the budget
  (grpcio has no server-wide memory quota in Python); `MAX_CONCURRENT_STREAMS` caps that
  per connection. Measured with `python -m bench.inflight` (8 concurrent PublishBatch of
  57 MiB, gateway RSS 56 MiB before): peak 1696 MiB when everything is admitted, 810 MiB
  with the default budget of 128 MiB (4 stored, 4 RESOURCE_EXHAUSTED), 528 MiB with 64 MiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, NoReturn

import grpc
from google.protobuf import descriptor_pool

log = logging.getLogger("jetgate.gateway")

# A batch of 1000 events of a few KiB each must fit in one request.
MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
# The shortest client ping interval accepted (clients should use 10 s or more).
MIN_CLIENT_PING_MS: Final = 5_000
KEEPALIVE_TIME_MS: Final = 30_000
KEEPALIVE_TIMEOUT_MS: Final = 10_000
MAX_CONCURRENT_STREAMS: Final = 1024
HANDSHAKE_TIMEOUT_MS = 10_000  # not Final: tests shorten it
MAX_CONNECTION_IDLE_MS: Final = 10 * 60_000
# Calls of these services count against the in-flight budget.
BUDGETED_PREFIX: Final = "/jetgate.v1.EventGateway/"

ServerOption = tuple[str, int]


def server_options() -> list[ServerOption]:
    """The channel arguments of the gateway's `grpc.aio.server`."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # What clients may do.
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", 2),
        # The server's own pings, also on idle connections and without limit.
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
        ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
        ("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_MS),
        # Several gateway processes share one port (gateway/processes.py); Linux only.
        ("grpc.so_reuseport", 1),
    ]


class InFlightBudget:
    """Bytes of requests being processed at once, at most `limit` (all on one event loop).

    Waiters are served first come, first served: a release grants room to the head of the
    line, and `try_acquire` never jumps ahead of a waiter.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def try_acquire(self, size: int) -> bool:
        """Take `size` bytes if they fit now and nobody waits."""
        if self._waiters or self.in_use + size > self.limit:
            return False
        self.in_use += size
        return True

    async def acquire(self, size: int) -> None:
        """Take `size` bytes, waiting in line for room; `size` must not exceed `limit`."""
        if size > self.limit:
            raise ValueError(f"{size} bytes exceed the budget of {self.limit}")
        if self.try_acquire(size):
            return
        entry = (size, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            await entry[1]
        except asyncio.CancelledError:
            if entry[1].done() and not entry[1].cancelled():
                self.release(size)  # granted just as the caller was cancelled
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._grant()  # those behind it may fit now
            raise

    def release(self, size: int) -> None:
        """Give back `size` bytes taken before."""
        self.in_use -= size
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self.in_use + self._waiters[0][0] <= self.limit:
            size, grant = self._waiters.popleft()
            if not grant.done():  # a cancelled waiter is skipped
                self.in_use += size
                grant.set_result(None)


class _Reservation:
    """Bytes held for one request; released once (explicitly, or when dropped)."""

    __slots__ = ("_budget", "size")

    def __init__(self, budget: InFlightBudget, size: int) -> None:
        self._budget: InFlightBudget | None = budget
        self.size = size

    def release(self) -> None:
        if self._budget is not None:
            self._budget.release(self.size)
            self._budget = None

    def __del__(self) -> None:
        # A request dropped between parsing and its handler (a cancelled call) gives back too.
        self.release()


class _Parsed:
    """What the guarded deserializer hands to the guarded handler."""

    __slots__ = ("message", "reservation", "size")

    def __init__(self, message: Any, reservation: _Reservation | None, size: int) -> None:
        self.message = message
        self.reservation = reservation
        self.size = size


class _Refused:
    __slots__ = ("code", "reason", "size")

    def __init__(self, code: grpc.StatusCode, reason: str, size: int) -> None:
        self.code, self.reason, self.size = code, reason, size


Context = grpc.aio.ServicerContext[Any, Any]
Deserializer = Callable[[bytes], Any]


class RequestGuard(grpc.aio.ServerInterceptor):
    """Parses requests safely and holds EventGateway calls within the in-flight budget."""

    def __init__(self, budget: InFlightBudget) -> None:
        self._budget = budget

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        budget = self._budget if method.startswith(BUDGETED_PREFIX) else None
        parse = handler.request_deserializer
        serializer = handler.response_serializer
        if handler.request_streaming:
            stream_parse = self._parser(parse, None)
            if handler.response_streaming:
                return grpc.stream_stream_rpc_method_handler(
                    self._guard_stream(handler.stream_stream, method, budget),
                    request_deserializer=stream_parse,
                    response_serializer=serializer,
                )
            return grpc.stream_unary_rpc_method_handler(
                self._guard_stream(handler.stream_unary, method, None),
                request_deserializer=stream_parse,
                response_serializer=serializer,
            )
        unary_parse = self._parser(parse, budget)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._guard_unary_stream(handler.unary_stream, method),
                request_deserializer=unary_parse,
                response_serializer=serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            self._guard_unary(handler.unary_unary, method),
            request_deserializer=unary_parse,
            response_serializer=serializer,
        )

    @staticmethod
    def _parser(parse: Deserializer, budget: InFlightBudget | None) -> Deserializer:
        def guarded(data: bytes) -> _Parsed | _Refused:
            reservation = None
            if budget is not None:
                if not budget.try_acquire(len(data)):
                    return _over_budget(budget, len(data))
                reservation = _Reservation(budget, len(data))
            try:
                return _Parsed(parse(data), reservation, len(data))
            except Exception:  # any failure to parse client bytes is the client's fault
                if reservation is not None:
                    reservation.release()
                return _Refused(grpc.StatusCode.INVALID_ARGUMENT, "", len(data))

        return guarded

    @staticmethod
    def _guard_unary(behavior: Any, method: str) -> Any:
        async def guarded(request: _Parsed | _Refused, context: Context) -> Any:
            if isinstance(request, _Refused):
                await _refuse(context, method, request)
            try:
                return await behavior(request.message, context)
            finally:
                if request.reservation is not None:
                    request.reservation.release()

        return guarded

    @staticmethod
    def _guard_unary_stream(behavior: Any, method: str) -> Any:
        async def guarded(request: _Parsed | _Refused, context: Context) -> AsyncIterator[Any]:
            if isinstance(request, _Refused):
                await _refuse(context, method, request)
            try:
                async for response in behavior(request.message, context):
                    yield response
            finally:
                if request.reservation is not None:
                    request.reservation.release()

        return guarded

    def _guard_stream(self, behavior: Any, method: str, budget: InFlightBudget | None) -> Any:
        async def guarded(requests: AsyncIterator[_Parsed | _Refused], context: Context) -> Any:
            held: deque[int] = deque()

            async def messages() -> AsyncIterator[Any]:
                async for request in requests:
                    if isinstance(request, _Refused):
                        await _refuse(context, method, request)
                    if budget is not None:
                        if request.size > budget.limit:
                            await _refuse(context, method, _over_budget(budget, request.size))
                        await budget.acquire(request.size)
                        held.append(request.size)
                    yield request.message

            try:
                async for response in behavior(messages(), context):
                    if held:  # one response per request message, in order
                        budget.release(held.popleft())  # type: ignore[union-attr]
                    yield response
            finally:
                if budget is not None:
                    budget.release(sum(held))
                held.clear()

        return guarded


def _over_budget(budget: InFlightBudget, size: int) -> _Refused:
    if size > budget.limit:
        reason = (
            f"request of {size} bytes exceeds the gateway's in-flight budget of {budget.limit} "
            "bytes (max_inflight_request_bytes): send smaller requests"
        )
    else:
        reason = (
            f"the gateway is processing {budget.in_use} request bytes (budget "
            f"{budget.limit}): retry with backoff and the same event ids"
        )
    return _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, reason, size)


async def _refuse(context: Context, method: str, refused: _Refused) -> NoReturn:
    """End the call with `refused`'s status; one bounded log line."""
    if refused.code == grpc.StatusCode.INVALID_ARGUMENT:
        reason = f"request bytes are not a valid {_request_type(method)}"
    else:
        reason = refused.reason
    peer = context.peer()[:64]
    log.warning("%s from %s refused (%d bytes): %s", method[:128], peer, refused.size, reason)
    await context.abort(refused.code, reason)


def _request_type(method: str) -> str:
    """The request message's full name of `/package.Service/Method` (for error messages)."""
    service, _, name = method.strip("/").partition("/")
    try:
        found = descriptor_pool.Default().FindServiceByName(service).methods_by_name[name]
    except KeyError:
        return "request message"
    return str(found.input_type.full_name)
