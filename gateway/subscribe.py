"""Subscribe: a gRPC client joins a declared consumer group as a remote member.

Each Subscribe stream is one `consumers.remote.RemoteMember` of the group: one
`consumers.Worker` (the Python runtime's pull loop, settlement policy, dead letters,
metrics and CONSUMER span per delivery) whose handlers hand each delivery to this stream
and wait for the client's settlement. See consumers/remote.py for what each settlement
does and when its SettlementResult says APPLIED; docs/api.md#subscribe for the client's
view.

Opening (the first request message must hold `open`, and only it):
- no `open` first, a second `open`, an empty group, `max_in_flight` 0: INVALID_ARGUMENT
  with a google.rpc.BadRequest naming the field;
- with auth on, a caller the policy does not grant `subscribe` on the group:
  PERMISSION_DENIED (checked before the group is looked up: no probing for names);
- a group not declared in `[[groups]]`: NOT_FOUND (google.rpc.ResourceInfo);
- `open.stream` set and not the group's stream: INVALID_ARGUMENT (field open.stream);
- NATS not connected or JetStream not answering: UNAVAILABLE (retry later);
  JetStream refusing the group's consumer: FAILED_PRECONDITION.
`max_in_flight` above the group's max_ack_pending is capped to it; `Subscribed` (the first
response) says the value in force and the group's settings.

The events a member receives: the registered types matching the group's `event_types`
globs, or with none every registered type routed to the group's stream; other events of
the group are dead-lettered as unknown-type by the runtime.

Sending: deliveries and settlement results ready together go in one response (at most
MAX_DELIVERIES_PER_RESPONSE deliveries, MAX_RESPONSE_PAYLOAD bytes of payload, under the
4 MiB a gRPC client accepts by default); a Heartbeat goes out when nothing was sent for
HEARTBEAT_INTERVAL seconds. A delivery's payload is the event as stored (`Any` with the
type URL and the stored bytes: exact, no re-encoding; the messages are built in
`gateway.subscribe_messages`).

Ending: when the client half-closes, cancels or breaks the stream, or the gateway stops
(`close()`: UNAVAILABLE to the client), the member hands every unsettled and prefetched
delivery back at once (nak without delay: another member gets it now, not after
ack_wait). The worker's drain (outstanding pull requests expire within ~2 s) goes on in
the background; `close()` waits for it.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from consumers import consumer
from consumers.group import ConsumerGroup, GroupConfigError
from consumers.remote import RemoteMember
from gateway import subscribe_messages as messages
from gateway.auth.policy import Action
from gateway.errors import abort, bad_request, make_status, not_found
from gateway.groups import GroupConfig, declared_consumer_config
from gateway.registry import TypeRegistry
from gateway.routing import Router
from gateway.security import ListenerSecurity
from jetgate.v1 import gateway_pb2

Context = grpc.aio.ServicerContext[object, object]
log = logging.getLogger("jetgate.gateway")

HEARTBEAT_INTERVAL = 5.0  # s without anything sent before a Heartbeat
MAX_DELIVERIES_PER_RESPONSE = 256
MAX_RESPONSE_PAYLOAD = 1 << 20  # bytes of event payload per response (one bigger goes alone)
CLOSE_TIMEOUT = 10.0  # s `close()` waits for the members' drains


class _Refused(Exception):
    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


@dataclass(frozen=True, slots=True)
class _Declared:
    config: GroupConfig
    group: ConsumerGroup
    consumer: ConsumerConfig  # as declared: description and marks included
    event_types: Mapping[str, type[Message]]


@dataclass(slots=True, eq=False)
class _Session:
    """One open Subscribe stream."""

    member: RemoteMember
    # Set when the stream must end with this status (second open, member failed, closing).
    failure: status_pb2.Status | None = None
    ended: bool = False  # the client half-closed
    tasks: list[asyncio.Task[object]] = field(default_factory=list)

    def fail(self, status: status_pb2.Status) -> None:
        if self.failure is None:
            self.failure = status
        self.member.wake.set()


def group_event_types(
    group: GroupConfig, registry: TypeRegistry, router: Router
) -> dict[str, type[Message]]:
    """The event types members of `group` receive (full name -> class): the registered
    types matching its `event_types` globs; none given: those routed to its stream."""
    if group.event_types:
        names = [
            n
            for n in sorted(registry.names())
            if any(fnmatch.fnmatchcase(n, glob) for glob in group.event_types)
        ]
    else:
        names = router.event_types_by_stream().get(group.stream, [])
    return {name: registry.message_class(name) for name in names}


class Subscriptions:
    """Serves Subscribe streams for the declared `groups` (see the module docstring).

    `connection()` is the gateway's current NATS connection (replaced when NATS closes
    one for good: members follow it, never close it).
    """

    def __init__(
        self,
        *,
        groups: Sequence[GroupConfig],
        registry: TypeRegistry,
        router: Router,
        security: ListenerSecurity,
        connection: Callable[[], NATS],
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self._groups = {
            g.name: _Declared(
                g,
                g.consumer_group(),
                declared_consumer_config(g),
                group_event_types(g, registry, router),
            )
            for g in groups
        }
        self._security = security
        self._connection = connection
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._sessions: dict[str, set[_Session]] = {}
        self._draining: set[asyncio.Task[object]] = set()
        self._closing = False

    def members(self, group: str) -> int:
        """Subscribe streams open on this gateway for `group`."""
        return len(self._sessions.get(group, ()))

    async def serve(
        self, requests: AsyncIterator[gateway_pb2.SubscribeRequest], context: Context
    ) -> AsyncIterator[gateway_pb2.SubscribeResponse]:
        """One Subscribe call."""
        try:
            first, declared = await self._open(requests)
            member = await self._join(declared, first.open)
        except _Refused as exc:
            await abort(context, exc.status)
        session = _Session(member)
        sessions = self._sessions.setdefault(declared.group.name, set())
        sessions.add(session)
        run: asyncio.Task[object] = asyncio.create_task(member.run())
        run.add_done_callback(lambda task: _member_ended(task, session))
        reader = asyncio.create_task(_read(requests, first, session))
        session.tasks = [run, reader]
        try:
            yield gateway_pb2.SubscribeResponse(
                subscribed=messages.subscribed(declared.group, member.credits)
            )
            async for response in _responses(session):
                yield response
            if session.failure is not None:
                await abort(context, session.failure)
        finally:
            member.close()
            reader.cancel()
            sessions.discard(session)
            self._draining.add(run)
            run.add_done_callback(self._draining.discard)

    async def close(self) -> None:
        """End every Subscribe stream (UNAVAILABLE), handing back every unsettled delivery;
        returns when the members drained (at most CLOSE_TIMEOUT s)."""
        self._closing = True
        stopping = make_status(grpc.StatusCode.UNAVAILABLE, "the gateway is stopping")
        tasks: list[asyncio.Task[object]] = list(self._draining)
        for sessions in self._sessions.values():
            for session in sessions:
                session.fail(stopping)
                session.member.close()
                tasks.append(session.tasks[0])
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
            for task in pending:
                task.cancel()

    async def _open(
        self, requests: AsyncIterator[gateway_pb2.SubscribeRequest]
    ) -> tuple[gateway_pb2.SubscribeRequest, _Declared]:
        first = await anext(aiter(requests), None)
        if first is None or not first.HasField("open"):
            raise _Refused(
                bad_request([("open", "the first request message must open (SubscribeOpen)")])
            )
        opening = first.open
        if not opening.group:
            raise _Refused(bad_request([("open.group", "required: a declared group's name")]))
        if opening.max_in_flight < 1:
            raise _Refused(
                bad_request([("open.max_in_flight", "must be at least 1 (the credits)")])
            )
        if denial := self._security.caller().denial(Action.SUBSCRIBE, opening.group):
            raise _Refused(denial)
        if self._closing:
            raise _Refused(make_status(grpc.StatusCode.UNAVAILABLE, "the gateway is stopping"))
        declared = self._groups.get(opening.group)
        if declared is None:
            # Not naming the declared groups: a caller may be allowed this name only.
            raise _Refused(
                not_found(
                    "consumer group",
                    opening.group,
                    "not declared in the gateway's configuration ([[groups]])",
                )
            )
        if opening.stream and opening.stream != declared.group.stream:
            raise _Refused(
                bad_request(
                    [
                        (
                            "open.stream",
                            f"group {opening.group} reads stream {declared.group.stream}, "
                            f"not {opening.stream}",
                        )
                    ]
                )
            )
        return first, declared

    async def _join(self, declared: _Declared, opening: gateway_pb2.SubscribeOpen) -> RemoteMember:
        """A member of `declared` over the current connection, its consumer ensured."""
        unavailable = make_status(
            grpc.StatusCode.UNAVAILABLE, "NATS is not reachable; subscribe again later"
        )
        try:
            nc = self._connection()
        except RuntimeError:
            raise _Refused(unavailable) from None
        if not nc.is_connected:
            raise _Refused(unavailable)
        member = RemoteMember(
            declared.group,
            declared.event_types,
            nc,
            credits=opening.max_in_flight,
            current=self._connection,
            tracer_provider=self._tracer_provider,
            meter_provider=self._meter_provider,
            consumer_config=declared.consumer,
        )
        try:
            ready = await consumer.ensure(nc.jetstream(), declared.group, declared.consumer)
        except GroupConfigError as exc:
            raise _Refused(make_status(grpc.StatusCode.FAILED_PRECONDITION, str(exc))) from None
        if not ready:
            raise _Refused(
                make_status(
                    grpc.StatusCode.UNAVAILABLE,
                    f"JetStream cannot set up group {declared.group.name} on stream "
                    f"{declared.group.stream} now; subscribe again later",
                )
            )
        return member


async def _read(
    requests: AsyncIterator[gateway_pb2.SubscribeRequest],
    first: gateway_pb2.SubscribeRequest,
    session: _Session,
) -> None:
    """Apply the client's settlements and credits (those of the opening message too)."""
    member = session.member
    try:
        await _apply(first, member)
        async for request in requests:
            if request.HasField("open"):
                session.fail(
                    bad_request([("open", "the stream is already open: send SubscribeOpen once")])
                )
                return
            await _apply(request, member)
        session.ended = True
    except grpc.RpcError:
        session.ended = True  # the stream broke; the RPC ends too
    except Exception as exc:  # a defect: end this stream, not the gateway
        log.exception("group %s: reading a Subscribe stream failed", member.group.name)
        session.fail(make_status(grpc.StatusCode.INTERNAL, f"reading the stream failed: {exc!r}"))
    finally:
        member.wake.set()


async def _apply(request: gateway_pb2.SubscribeRequest, member: RemoteMember) -> None:
    actions = messages.ACTIONS
    for settlement in request.settlements:
        delay = None
        if settlement.HasField("delay"):
            delay = settlement.delay.seconds + settlement.delay.nanos / 1e9
        # `apply`, not `settle`: no coroutine per settlement; only IN_PROGRESS awaits.
        sending = member.apply(
            settlement.ack_id,
            actions.get(settlement.action),
            delay=delay,
            reason=settlement.reason,
        )
        if sending is not None:
            await sending
    if request.add_credits:
        member.add_credits(request.add_credits)


async def _responses(session: _Session) -> AsyncIterator[gateway_pb2.SubscribeResponse]:
    """Deliveries and results as they are ready; heartbeats when idle; until the stream
    ends."""
    member = session.member
    while session.failure is None and not session.ended:
        batch = member.take(MAX_DELIVERIES_PER_RESPONSE, MAX_RESPONSE_PAYLOAD)
        if batch:
            yield messages.response(batch)
            continue
        member.wake.clear()
        try:
            async with asyncio.timeout(HEARTBEAT_INTERVAL):
                await member.wake.wait()
        except TimeoutError:
            heartbeat = gateway_pb2.Heartbeat(
                in_flight=member.in_flight, max_in_flight=member.credits
            )
            yield gateway_pb2.SubscribeResponse(heartbeat=heartbeat)


def _member_ended(task: asyncio.Task[object], session: _Session) -> None:
    if task.cancelled() or (exc := task.exception()) is None:
        return
    if isinstance(exc, GroupConfigError):
        session.fail(make_status(grpc.StatusCode.FAILED_PRECONDITION, str(exc)))
        return
    log.warning("group %s: a Subscribe member failed: %r", session.member.group.name, exc)
    session.fail(make_status(grpc.StatusCode.UNAVAILABLE, f"the group's member failed: {exc}"))
