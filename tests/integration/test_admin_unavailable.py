"""Admin while NATS is away: UNAVAILABLE at once (no wait for a timeout), the types still
answered (they need no NATS), and answers again once NATS is back."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
import grpc.aio
import pytest

from gateway.embedded import NatsServer
from gateway.server import Gateway
from jetgate.v1 import admin_pb2, admin_pb2_grpc
from tests.integration.admin_support import admin, violations
from tests.support.eventually import eventually

__all__ = ["admin"]  # the fixture


async def test_nats_away_is_unavailable_and_types_still_answer(
    nats_server: NatsServer, gateway: Gateway, admin: admin_pb2_grpc.AdminAsyncStub
) -> None:
    assert [s.name for s in (await admin.ListStreams(admin_pb2.ListStreamsRequest())).streams]

    nats_server.stop()
    await eventually(lambda: not gateway.nats.is_connected)

    calls: list[Awaitable[object]] = [
        admin.ListStreams(admin_pb2.ListStreamsRequest(), timeout=20),
        admin.GetStream(admin_pb2.GetStreamRequest(stream="ORDERS"), timeout=20),
        admin.ListGroups(admin_pb2.ListGroupsRequest(), timeout=20),
        admin.GetGroup(admin_pb2.GetGroupRequest(group="billing"), timeout=20),
        admin.ListDeadLetters(admin_pb2.ListDeadLettersRequest(group="billing"), timeout=20),
        admin.RedriveDeadLetters(admin_pb2.RedriveDeadLettersRequest(group="billing"), timeout=20),
        admin.PurgeDeadLetters(admin_pb2.PurgeDeadLettersRequest(group="billing"), timeout=20),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as away:
            await call
        assert away.value.code() == grpc.StatusCode.UNAVAILABLE, away.value
    types = await admin.ListTypes(admin_pb2.ListTypesRequest(), timeout=20)
    assert types.types
    # Bad input is bad input whether or not NATS is there.
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await admin.GetStream(admin_pb2.GetStreamRequest(stream=""), timeout=20)
    assert "stream" in violations(bad.value)

    nats_server.start()

    async def answers() -> bool:
        try:
            reply = await admin.ListStreams(admin_pb2.ListStreamsRequest(), timeout=20)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                return False
            raise
        return [s.name for s in reply.streams] == ["ORDERS"]

    await eventually(answers)
