"""The jetgate.v1.Admin servicer (placeholder: every method UNIMPLEMENTED for now)."""

from __future__ import annotations

from typing import NoReturn

import grpc

from jetgate.v1 import admin_pb2, admin_pb2_grpc

Context = grpc.aio.ServicerContext[object, object]


async def _unimplemented(context: Context) -> NoReturn:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Admin is not built yet")


class AdminServicer(admin_pb2_grpc.AdminServicer):
    """Streams, groups, dead letters and event types of this gateway."""

    async def ListStreams(
        self, request: admin_pb2.ListStreamsRequest, context: Context
    ) -> admin_pb2.ListStreamsResponse:
        await _unimplemented(context)

    async def GetStream(
        self, request: admin_pb2.GetStreamRequest, context: Context
    ) -> admin_pb2.StreamInfo:
        await _unimplemented(context)

    async def ListGroups(
        self, request: admin_pb2.ListGroupsRequest, context: Context
    ) -> admin_pb2.ListGroupsResponse:
        await _unimplemented(context)

    async def GetGroup(
        self, request: admin_pb2.GetGroupRequest, context: Context
    ) -> admin_pb2.GroupInfo:
        await _unimplemented(context)

    async def ListDeadLetters(
        self, request: admin_pb2.ListDeadLettersRequest, context: Context
    ) -> admin_pb2.ListDeadLettersResponse:
        await _unimplemented(context)

    async def RedriveDeadLetters(
        self, request: admin_pb2.RedriveDeadLettersRequest, context: Context
    ) -> admin_pb2.RedriveDeadLettersResponse:
        await _unimplemented(context)

    async def PurgeDeadLetters(
        self, request: admin_pb2.PurgeDeadLettersRequest, context: Context
    ) -> admin_pb2.PurgeDeadLettersResponse:
        await _unimplemented(context)

    async def ListTypes(
        self, request: admin_pb2.ListTypesRequest, context: Context
    ) -> admin_pb2.ListTypesResponse:
        await _unimplemented(context)

    async def GetSchema(
        self, request: admin_pb2.GetSchemaRequest, context: Context
    ) -> admin_pb2.GetSchemaResponse:
        await _unimplemented(context)
