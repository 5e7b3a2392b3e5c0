"""Interop with grpcurl against the secured gateway: TLS with `-cacert`, mTLS with
`-cert/-key`, bearer tokens with `-H 'authorization: Bearer ...'`; refusals show their
status and ErrorInfo, and nothing is stored."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from nats.aio.client import Client

from gateway.config import GatewayConfig
from gateway.server import Gateway
from jetgate import wire
from tests.integration.conftest import serving
from tests.integration.secure import API_TOKEN, SPIFFE_ID, TOKEN_NAME, SecureFiles
from tests.interop.conftest import peer, run_peer
from tests.interop.test_grpcurl import ORDER

pytestmark = pytest.mark.interop

PAID = {
    "event": {
        "key": "o-42",
        "payload": {
            "@type": "type.googleapis.com/jetgate.examples.orders.v1.OrderPaid",
            "orderId": "o-42",
        },
    }
}


@pytest.fixture
def files(tmp_path: Path) -> SecureFiles:
    return SecureFiles.make(tmp_path)


@pytest.fixture
async def tls_gateway(files: SecureFiles, gateway_config: GatewayConfig) -> AsyncIterator[Gateway]:
    async with serving(files.config(gateway_config)) as gateway:
        yield gateway


@pytest.fixture
async def mtls_gateway(files: SecureFiles, gateway_config: GatewayConfig) -> AsyncIterator[Gateway]:
    async with serving(files.config(gateway_config, mutual=True)) as gateway:
        yield gateway


async def _grpcurl(gateway: Gateway, files: SecureFiles, *args: str) -> tuple[int, str, str]:
    assert gateway.address.startswith("127.0.0.1:")
    tls = ["-cacert", str(files.dir / "ca.pem"), "-servername", "localhost"]
    done = await run_peer(
        [str(peer("grpcurl")), *tls, *args[:-1], gateway.address, args[-1]],
        home=files.dir / "home",
    )
    return done.returncode, done.stdout, done.stderr


async def test_a_bearer_token_over_tls_publishes(
    tls_gateway: Gateway, files: SecureFiles, nc: Client
) -> None:
    code, out, err = await _grpcurl(
        tls_gateway,
        files,
        "-H",
        f"authorization: Bearer {API_TOKEN}",
        "-d",
        json.dumps(ORDER),
        "jetgate.v1.EventGateway/Publish",
    )
    assert code == 0, err
    reply = json.loads(out)
    stored = await nc.jetstream().get_msg("ORDERS", int(reply["sequence"]))
    assert (stored.headers or {})[wire.PRINCIPAL] == TOKEN_NAME


async def test_refusals_show_their_status_and_store_nothing(
    tls_gateway: Gateway, files: SecureFiles, nc: Client
) -> None:
    publish = ("-d", json.dumps(ORDER), "jetgate.v1.EventGateway/Publish")
    # Without a token, reflection (which grpcurl needs for the schema) is refused too.
    code, _, err = await _grpcurl(tls_gateway, files, *publish)
    assert code != 0
    assert "Unauthenticated" in err
    code, _, err = await _grpcurl(
        tls_gateway,
        files,
        "-H",
        f"authorization: Bearer {API_TOKEN}",
        "-d",
        json.dumps(PAID),
        "jetgate.v1.EventGateway/Publish",
    )
    assert code != 0
    assert "PermissionDenied" in err
    assert "ACTION_DENIED" in err
    assert API_TOKEN not in err
    assert (await nc.jetstream().stream_info("ORDERS")).state.messages == 0


async def test_health_needs_no_credentials(tls_gateway: Gateway, files: SecureFiles) -> None:
    # Reflection needs credentials here: the health schema comes from a protoset, as a load
    # balancer's probe would have it built in.
    protoset = files.dir / "health.protoset"
    descriptors = descriptor_pb2.FileDescriptorSet()
    health_pb2.DESCRIPTOR.CopyToProto(descriptors.file.add())
    protoset.write_bytes(descriptors.SerializeToString())
    code, out, err = await _grpcurl(
        tls_gateway, files, "-protoset", str(protoset), "grpc.health.v1.Health/Check"
    )
    assert code == 0, err
    assert json.loads(out)["status"] == "SERVING"


async def test_a_client_certificate_publishes_as_its_spiffe_id(
    mtls_gateway: Gateway, files: SecureFiles, nc: Client
) -> None:
    cert = ["-cert", str(files.dir / "client.pem"), "-key", str(files.dir / "client.key")]
    code, out, err = await _grpcurl(
        mtls_gateway, files, *cert, "-d", json.dumps(PAID), "jetgate.v1.EventGateway/Publish"
    )
    assert code == 0, err
    stored = await nc.jetstream().get_msg("ORDERS", int(json.loads(out)["sequence"]))
    assert (stored.headers or {})[wire.PRINCIPAL] == SPIFFE_ID
    # Without the certificate the handshake fails: no call happens at all.
    code, _, err = await _grpcurl(mtls_gateway, files, "list")
    assert code != 0
    assert "Unauthenticated" not in err  # refused at the handshake, before any call
