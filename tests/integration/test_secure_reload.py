"""Rotation without a restart: `Gateway.reload()` (what SIGHUP calls) re-reads the policy
and the listener's certificate; a broken new policy keeps the old one."""

from __future__ import annotations

from pathlib import Path

import grpc
import grpc.aio
import pytest
import trustme
from nats.aio.client import Client

from gateway.config import GatewayConfig
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import gateway_pb2_grpc
from tests.gateway.secure_serving import SERVER_NAME, write
from tests.integration.conftest import request, serving
from tests.integration.secure import API_TOKEN, POLICY, SecureFiles, bearer, channel

TOKEN = bearer(API_TOKEN)
# Long enough that only reload() re-reads the files within a test.
NEVER = 3600.0


async def _publish_paid(ch: grpc.aio.Channel) -> grpc.StatusCode:
    stub: gateway_pb2_grpc.EventGatewayAsyncStub = gateway_pb2_grpc.EventGatewayStub(ch)
    paid = request("o-1", message=orders_pb2.OrderPaid(order_id="o-1"))
    try:
        await stub.Publish(paid, metadata=TOKEN, timeout=20)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_reload_applies_a_new_policy_and_keeps_the_old_one_when_broken(
    tmp_path: Path, gateway_config: GatewayConfig, nc: Client
) -> None:
    files = SecureFiles.make(tmp_path)
    policy = tmp_path / "policy.toml"
    config = files.config(gateway_config, reload_interval=NEVER)
    async with serving(config) as gateway, channel(gateway.address, files) as ch:
        assert await _publish_paid(ch) == grpc.StatusCode.PERMISSION_DENIED
        write(policy, POLICY.replace(".OrderPlaced", ".Order*").encode())
        assert await _publish_paid(ch) == grpc.StatusCode.PERMISSION_DENIED  # not yet read
        gateway.reload()
        assert await _publish_paid(ch) == grpc.StatusCode.OK
        write(policy, b"[[grants]]\nprincipals = 1\n")
        gateway.reload()
        assert await _publish_paid(ch) == grpc.StatusCode.OK


async def test_reload_serves_a_rotated_certificate_to_new_connections(
    tmp_path: Path, gateway_config: GatewayConfig
) -> None:
    files = SecureFiles.make(tmp_path)
    config = files.config(gateway_config, reload_interval=NEVER)
    async with serving(config) as gateway:
        new_ca = trustme.CA()
        rotated = new_ca.issue_cert(SERVER_NAME, "127.0.0.1")
        write(tmp_path / "server.pem", b"".join(b.bytes() for b in rotated.cert_chain_pems))
        write(tmp_path / "server.key", rotated.private_key_pem.bytes())
        gateway.reload()
        creds = grpc.ssl_channel_credentials(root_certificates=new_ca.cert_pem.bytes())
        options = (("grpc.ssl_target_name_override", SERVER_NAME),)
        async with grpc.aio.secure_channel(gateway.address, creds, options=options) as ch:
            stub: gateway_pb2_grpc.EventGatewayAsyncStub = gateway_pb2_grpc.EventGatewayStub(ch)
            reply = await stub.Publish(request("o-1"), metadata=TOKEN, timeout=20)
        assert reply.sequence == 1
        # A client that trusts only the old CA cannot complete a new handshake.
        async with channel(gateway.address, files) as old:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await gateway_pb2_grpc.EventGatewayStub(old).Publish(
                    request("o-2"), metadata=TOKEN, timeout=5
                )
        assert refused.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
