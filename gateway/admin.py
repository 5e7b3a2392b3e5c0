"""The jetgate.v1.Admin servicer: streams, groups, dead letters and event types.

What each answer holds is decided in its own module: gateway/admin_streams.py (the managed
streams: the configured ones, then `DLQ` when it exists), gateway/admin_groups.py (durable
consumers of the configured streams, declared or not), gateway/admin_dead_letters.py (the
operations of `consumers.deadletter`, which `jetgate dlq` runs too) and
gateway/admin_types.py (registered types, routes, schemas). This module checks each
request, authorizes it, and maps failures to statuses:

- An empty or malformed stream, group or type name: INVALID_ARGUMENT with a BadRequest
  naming the field. GetGroup without a stream for a group held by several streams:
  INVALID_ARGUMENT on `stream`, naming them.
- A stream the gateway does not manage (or that JetStream does not hold), a group without
  a durable consumer there, a type not registered: NOT_FOUND with a ResourceInfo.
- Dead-letter methods on a group that is neither declared nor a consumer of a configured
  stream: NOT_FOUND, unless dead letters of that name are stored (the group may have been
  deleted; its dead letters stay listable, redrivable and purgeable). Without a
  dead-letter stream a known group simply has none.
- NATS disconnected, not answering in time, or JetStream unavailable: UNAVAILABLE
  (retryable; nothing was changed unless the method was a redrive or purge, which are
  safe to repeat). The call's deadline bounds each JetStream request.
- Authentication on: each stream method needs `admin` on the stream, each group and
  dead-letter method `admin` on the group (gateway/auth/policy.py), else PERMISSION_DENIED
  (checked before existence, so a denied caller learns nothing). ListStreams and ListGroups
  leave out what the caller may not administer. ListTypes and GetSchema need only an
  authenticated caller (the interceptor's job): schemas are what clients publish.

`members(group)`: how many Subscribe streams of the group this gateway holds (the
Subscribe servicer's count; 0 without one).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from consumers import deadletter
from gateway import admin_dead_letters, admin_types
from gateway.admin_call import (
    TYPE_NAME,
    AdminCall,
    group_name,
    nats_status,
    stream_name,
)
from gateway.admin_groups import (
    GroupContext,
    Members,
    durable_consumer,
    durable_consumers,
    group_message,
)
from gateway.admin_streams import managed_streams, stream_info, stream_message
from gateway.config import GatewayConfig
from gateway.errors import RpcAbort, abort, bad_request, make_status, not_found
from gateway.registry import TypeRegistry, UnknownTypeError
from gateway.routing import Router
from gateway.security import ListenerSecurity
from jetgate import wire
from jetgate.v1 import admin_pb2, admin_pb2_grpc

Context = grpc.aio.ServicerContext[object, object]
Request = TypeVar("Request")
Reply = TypeVar("Reply")

# Longest wait for one JetStream answer (shorter when the call's deadline is nearer).
DEFAULT_TIMEOUT = 5.0


def no_members(group: str) -> int:
    """The member count without a Subscribe servicer: none."""
    return 0


class AdminServicer(admin_pb2_grpc.AdminServicer):
    """Streams, groups, dead letters and event types of this gateway (module docstring)."""

    def __init__(
        self,
        *,
        config: GatewayConfig,
        registry: TypeRegistry,
        router: Router,
        nats: Callable[[], NATS],
        security: ListenerSecurity,
        members: Members = no_members,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._registry = registry
        self._router = router
        self._nats = nats
        self._security = security
        self._timeout = timeout
        self._streams = [s.name for s in config.streams]
        self._groups = GroupContext.of(config.groups, router.event_types_by_stream(), members)

    async def ListStreams(
        self, request: admin_pb2.ListStreamsRequest, context: Context
    ) -> admin_pb2.ListStreamsResponse:
        return await self._serve(context, self._list_streams, request)

    async def GetStream(
        self, request: admin_pb2.GetStreamRequest, context: Context
    ) -> admin_pb2.StreamInfo:
        return await self._serve(context, self._get_stream, request)

    async def ListGroups(
        self, request: admin_pb2.ListGroupsRequest, context: Context
    ) -> admin_pb2.ListGroupsResponse:
        return await self._serve(context, self._list_groups, request)

    async def GetGroup(
        self, request: admin_pb2.GetGroupRequest, context: Context
    ) -> admin_pb2.GroupInfo:
        return await self._serve(context, self._get_group, request)

    async def ListDeadLetters(
        self, request: admin_pb2.ListDeadLettersRequest, context: Context
    ) -> admin_pb2.ListDeadLettersResponse:
        return await self._serve(context, self._list_dead_letters, request)

    async def RedriveDeadLetters(
        self, request: admin_pb2.RedriveDeadLettersRequest, context: Context
    ) -> admin_pb2.RedriveDeadLettersResponse:
        return await self._serve(context, self._redrive_dead_letters, request)

    async def PurgeDeadLetters(
        self, request: admin_pb2.PurgeDeadLettersRequest, context: Context
    ) -> admin_pb2.PurgeDeadLettersResponse:
        return await self._serve(context, self._purge_dead_letters, request)

    async def ListTypes(
        self, request: admin_pb2.ListTypesRequest, context: Context
    ) -> admin_pb2.ListTypesResponse:
        return admin_pb2.ListTypesResponse(
            types=admin_types.type_infos(self._registry, self._router)
        )

    async def GetSchema(
        self, request: admin_pb2.GetSchemaRequest, context: Context
    ) -> admin_pb2.GetSchemaResponse:
        name = wire.type_from_url(request.event_type)  # a full name, or a type URL
        if not TYPE_NAME.fullmatch(name):
            problem = "must name an event type (a full protobuf name or its type URL)"
            await abort(context, bad_request([("event_type", problem)]))
        try:
            return admin_types.schema(self._registry, name)
        except UnknownTypeError:
            await abort(context, not_found("event type", name, "not a registered event type"))

    async def _list_streams(
        self, call: AdminCall, request: admin_pb2.ListStreamsRequest
    ) -> admin_pb2.ListStreamsResponse:
        reply = admin_pb2.ListStreamsResponse()
        for name in managed_streams(self._streams):
            if call.may(name) and (info := await stream_info(call.nc, name, within=call.timeout)):
                reply.streams.append(stream_message(info, self._event_types(name)))
        return reply

    async def _get_stream(
        self, call: AdminCall, request: admin_pb2.GetStreamRequest
    ) -> admin_pb2.StreamInfo:
        name = stream_name(request.stream, "stream")
        call.authorize(name)
        if name not in managed_streams(self._streams):
            raise RpcAbort(not_found("stream", name, "not a stream this gateway manages"))
        info = await stream_info(call.nc, name, within=call.timeout)
        if info is None:
            raise RpcAbort(not_found("stream", name, "JetStream does not hold it (yet)"))
        return stream_message(info, self._event_types(name))

    async def _list_groups(
        self, call: AdminCall, request: admin_pb2.ListGroupsRequest
    ) -> admin_pb2.ListGroupsResponse:
        streams = self._streams
        if request.stream:
            streams = [self._configured(stream_name(request.stream, "stream"))]
        reply = admin_pb2.ListGroupsResponse()
        for stream in streams:
            for info in await durable_consumers(call.js, stream):
                if call.may(info.name):
                    dead = await deadletter.count(call.js, info.name)
                    reply.groups.append(group_message(info, self._groups, dead_letters=dead))
        return reply

    async def _get_group(
        self, call: AdminCall, request: admin_pb2.GetGroupRequest
    ) -> admin_pb2.GroupInfo:
        group = group_name(request.group)
        stream = stream_name(request.stream, "stream") if request.stream else ""
        call.authorize(group)
        if stream:
            self._configured(stream)
        elif (declared := self._groups.declaration(group)) is not None:
            stream = declared.stream
        candidates = [stream] if stream else self._streams
        found = [
            info
            for s in candidates
            if (info := await durable_consumer(call.js, s, group)) is not None
        ]
        if not found:
            where = f"stream {stream}" if stream else "any stream this gateway manages"
            raise RpcAbort(not_found("group", group, f"no consumer group {group} on {where}"))
        if len(found) > 1:
            held = ", ".join(i.stream_name for i in found)
            raise RpcAbort(
                bad_request([("stream", f"group {group} is on streams {held}: name one")])
            )
        dead = await deadletter.count(call.js, group)
        return group_message(found[0], self._groups, dead_letters=dead)

    async def _list_dead_letters(
        self, call: AdminCall, request: admin_pb2.ListDeadLettersRequest
    ) -> admin_pb2.ListDeadLettersResponse:
        group = await self._dead_letter_group(call, request.group)
        return await admin_dead_letters.list_dead_letters(call.js, group, request.limit)

    async def _redrive_dead_letters(
        self, call: AdminCall, request: admin_pb2.RedriveDeadLettersRequest
    ) -> admin_pb2.RedriveDeadLettersResponse:
        group = await self._dead_letter_group(call, request.group)
        return await admin_dead_letters.redrive_dead_letters(
            call.js, group, max_payload=call.nc.max_payload
        )

    async def _purge_dead_letters(
        self, call: AdminCall, request: admin_pb2.PurgeDeadLettersRequest
    ) -> admin_pb2.PurgeDeadLettersResponse:
        group = await self._dead_letter_group(call, request.group)
        return await admin_dead_letters.purge_dead_letters(call.js, group)

    async def _dead_letter_group(self, call: AdminCall, name: str) -> str:
        """`name` checked, authorized and known (see the module docstring)."""
        group = group_name(name)
        call.authorize(group)
        if self._groups.declaration(group) is not None:
            return group
        for stream in self._streams:
            if await durable_consumer(call.js, stream, group) is not None:
                return group
        if await deadletter.count(call.js, group):
            return group
        raise RpcAbort(
            not_found("group", group, f"no consumer group {group} and no dead letters of it")
        )

    def _configured(self, stream: str) -> str:
        if stream not in self._streams:
            raise RpcAbort(
                not_found("stream", stream, "not a stream of this gateway's consumer groups")
            )
        return stream

    def _event_types(self, stream: str) -> list[str]:
        return list(self._groups.routed.get(stream, ()))

    async def _serve(
        self,
        context: Context,
        work: Callable[[AdminCall, Request], Awaitable[Reply]],
        request: Request,
    ) -> Reply:
        """Run `work` for `request` with this call's `AdminCall`; failures become statuses."""
        try:
            return await work(self._call(context), request)
        except RpcAbort as exc:
            await abort(context, exc.status)
        except (TimeoutError, NatsError) as exc:
            await abort(context, nats_status(exc))

    def _call(self, context: Context) -> AdminCall:
        remaining = context.time_remaining()
        timeout = min(self._timeout, math.inf if remaining is None else remaining)
        if timeout <= 0:
            raise RpcAbort(make_status(grpc.StatusCode.DEADLINE_EXCEEDED, "no time left"))
        return AdminCall(nats=self._nats, timeout=timeout, caller=self._security.caller())
