"""Subscribe under authentication: the policy grants `subscribe` per group."""

from __future__ import annotations

from pathlib import Path

import grpc

from gateway.config import GatewayConfig
from jetgate.v1 import gateway_pb2_grpc
from tests.integration.conftest import serving
from tests.integration.secure import API_TOKEN, POLICY, TOKEN_NAME, SecureFiles, bearer, channel
from tests.integration.subscriber import GROUP, subscribed, with_group
from tests.support.eventually import eventually

TOKEN = bearer(API_TOKEN)


async def test_the_policy_decides_who_may_subscribe_to_a_group(
    tmp_path: Path, gateway_config: GatewayConfig
) -> None:
    files = SecureFiles.make(tmp_path)
    # The token may subscribe to GROUP only; the declared group "other" is not granted.
    (files.dir / "policy.toml").write_text(
        f'{POLICY}\n[[grants]]\nprincipals = ["{TOKEN_NAME}"]\nsubscribe = ["{GROUP}"]\n'
    )
    config = with_group(with_group(gateway_config), name="other")
    async with (
        serving(files.config(config)) as gateway,
        channel(gateway.address, files) as ch,
    ):
        stub = gateway_pb2_grpc.EventGatewayStub(ch)
        async with subscribed(stub, metadata=TOKEN) as allowed:
            await eventually(lambda: allowed.subscribed is not None)
        async with subscribed(stub, group="other", metadata=TOKEN) as denied:
            error = await eventually(denied.failure)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        async with subscribed(stub) as anonymous:
            error = await eventually(anonymous.failure)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
