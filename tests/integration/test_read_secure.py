"""Read with auth on: the policy's `read` grant per stream decides (PERMISSION_DENIED)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from gateway.config import GatewayConfig
from gateway.server import Gateway
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import request, rich_status, serving
from tests.integration.secure import API_TOKEN, PLACED, TOKEN_NAME, SecureFiles, bearer, channel

# The token may publish OrderPlaced and read ORDERS; the JWT role may only publish.
POLICY = f"""
[[grants]]
principals = ["{TOKEN_NAME}"]
publish = ["{PLACED}"]
read = ["ORDERS"]

[[grants]]
roles = ["order-writer"]
publish = ["{PLACED}"]
"""


@pytest.fixture
async def secured(
    tmp_path: Path, gateway_config: GatewayConfig
) -> AsyncIterator[tuple[gateway_pb2_grpc.EventGatewayAsyncStub, SecureFiles]]:
    files = SecureFiles.make(tmp_path)
    (files.dir / "policy.toml").write_text(POLICY)
    gateway: Gateway
    async with (
        serving(files.config(gateway_config)) as gateway,
        channel(gateway.address, files) as ch,
    ):
        yield gateway_pb2_grpc.EventGatewayStub(ch), files


def by_key(key: str) -> gateway_pb2.ReadRequest:
    return gateway_pb2.ReadRequest(key=gateway_pb2.KeySelector(event_type=PLACED, key=key))


async def collect(call: AsyncIterable[gateway_pb2.ReadResponse]) -> list[gateway_pb2.ReadResponse]:
    return [response async for response in call]


async def test_read_needs_a_read_grant_on_the_stream(
    secured: tuple[gateway_pb2_grpc.EventGatewayAsyncStub, SecureFiles],
) -> None:
    stub, files = secured
    token = bearer(API_TOKEN)
    stored = await stub.Publish(request("o-1"), metadata=token, timeout=20)

    granted = [r async for r in stub.Read(by_key("o-1"), metadata=token, timeout=20)]
    assert [r.event.event.sequence for r in granted[:-1]] == [stored.sequence]
    assert granted[-1].caught_up.count == 1

    jwt = bearer(files.jwt())
    for read in (
        by_key("o-1"),
        gateway_pb2.ReadRequest(subjects=gateway_pb2.SubjectSelector(stream="ORDERS")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await collect(stub.Read(read, metadata=jwt, timeout=20))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "ORDERS" in rich_status(denied.value).message

    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await collect(stub.Read(by_key("o-1"), timeout=20))
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
