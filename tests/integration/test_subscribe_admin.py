"""Admin sees the Subscribe members this gateway holds (GetGroup.members_connected)."""

from __future__ import annotations

import grpc

from gateway.config import GatewayConfig
from jetgate.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2_grpc
from tests.integration.conftest import serving
from tests.integration.subscriber import GROUP, subscribed, with_group
from tests.support.eventually import eventually


async def test_get_group_counts_the_connected_subscribers(gateway_config: GatewayConfig) -> None:
    async with (
        serving(with_group(gateway_config)) as gateway,
        grpc.aio.insecure_channel(gateway.address) as channel,
    ):
        stub: gateway_pb2_grpc.EventGatewayAsyncStub = gateway_pb2_grpc.EventGatewayStub(channel)
        admin: admin_pb2_grpc.AdminAsyncStub = admin_pb2_grpc.AdminStub(channel)

        async def members() -> int:
            reply = await admin.GetGroup(admin_pb2.GetGroupRequest(group=GROUP))
            return int(reply.members_connected)

        async with subscribed(stub) as one, subscribed(stub) as two:
            await eventually(lambda: None not in (one.subscribed, two.subscribed))
            assert await members() == 2

        async def none_left() -> bool:
            return await members() == 0

        await eventually(none_left)
