"""The real gateway with TLS, mTLS, tokens, JWTs and a policy (issue 10), over a real NATS.

Every refused call stores nothing; every stored event carries its publisher's principal
(`Jetgate-Principal`), which a consumer sees as `Delivery.principal` and a dead letter keeps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import grpc.aio
import pytest
import trustme
from cryptography.hazmat.primitives.asymmetric import ec
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from nats.aio.client import Client

from consumers import ConsumerGroup, Delivery, Reject, Worker, deadletter
from gateway.config import GatewayConfig
from gateway.server import Gateway
from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc
from tests.consumers.conftest import running
from tests.integration.conftest import request, rich_status, serving
from tests.integration.secure import (
    API_TOKEN,
    PLACED,
    SPIFFE_ID,
    TOKEN_NAME,
    SecureFiles,
    bearer,
    channel,
)
from tests.support.eventually import eventually

TOKEN = bearer(API_TOKEN)


@pytest.fixture
def files(tmp_path: Path) -> SecureFiles:
    return SecureFiles.make(tmp_path)


@pytest.fixture
async def secured(files: SecureFiles, gateway_config: GatewayConfig) -> AsyncIterator[Gateway]:
    async with serving(files.config(gateway_config)) as gateway:
        yield gateway


@pytest.fixture
async def stub(
    secured: Gateway, files: SecureFiles
) -> AsyncIterator[gateway_pb2_grpc.EventGatewayAsyncStub]:
    async with channel(secured.address, files) as ch:
        yield gateway_pb2_grpc.EventGatewayStub(ch)


def paid(key: str = "o-42") -> gateway_pb2.PublishRequest:
    return request(key, message=orders_pb2.OrderPaid(order_id=key, payment_id="p-1"))


async def stored(nc: Client) -> int:
    return int((await nc.jetstream().stream_info("ORDERS")).state.messages)


def info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    for detail in rich_status(error).details:
        found = error_details_pb2.ErrorInfo()
        if detail.Unpack(found):
            return found
    raise AssertionError(f"no ErrorInfo in {error!r}")


async def test_a_token_caller_publishes_and_its_principal_is_stored_seen_and_kept(
    stub: gateway_pb2_grpc.EventGatewayAsyncStub, nc: Client
) -> None:
    reply = await stub.Publish(request("o-1"), metadata=TOKEN, timeout=20)

    message = await nc.jetstream().get_msg("ORDERS", reply.sequence)
    assert message.headers is not None
    assert message.headers[wire.PRINCIPAL] == TOKEN_NAME
    billing = ConsumerGroup("billing", stream="ORDERS", filter_subjects=["orders.>"])
    seen: list[str | None] = []

    @billing.handler(orders_pb2.OrderPlaced)
    async def refuse(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        seen.append(delivery.principal)
        raise Reject("kept for the audit")

    js = nc.jetstream()
    worker = Worker(billing, nc)
    async with running(worker):
        await eventually(lambda: worker.stats.dead_lettered == 1)
    assert seen == [TOKEN_NAME]
    [letter] = [d async for d in deadletter.dead_letters(js, "billing")]
    assert letter.headers[wire.PRINCIPAL] == TOKEN_NAME
    # Redriven, the event still says who published it.
    assert len(await deadletter.redrive(js, "billing")) == 1
    again = await js.get_last_msg("ORDERS", "orders.OrderPlaced.o-1")
    assert again.seq > reply.sequence
    assert (again.headers or {})[wire.PRINCIPAL] == TOKEN_NAME


async def test_a_client_cannot_set_the_principal_header(
    stub: gateway_pb2_grpc.EventGatewayAsyncStub, nc: Client
) -> None:
    for name in (wire.PRINCIPAL, "jetgate-principal"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Publish(request(headers={name: "root"}), metadata=TOKEN, timeout=20)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await stored(nc) == 0


async def test_the_policy_denies_a_type_not_granted_and_stores_nothing(
    stub: gateway_pb2_grpc.EventGatewayAsyncStub, nc: Client
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.Publish(paid(), metadata=TOKEN, timeout=20)

    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    detail = info(denied.value)
    assert (detail.reason, detail.domain) == ("ACTION_DENIED", "jetgate")
    assert detail.metadata["resource"] == "jetgate.examples.orders.v1.OrderPaid"
    assert detail.metadata["principal"] == TOKEN_NAME
    assert API_TOKEN not in str(denied.value)
    assert await stored(nc) == 0


async def test_a_batch_is_denied_per_entry(
    stub: gateway_pb2_grpc.EventGatewayAsyncStub, nc: Client
) -> None:
    batch = gateway_pb2.PublishBatchRequest(entries=[request("o-1"), paid("o-2"), request("o-3")])
    reply = await stub.PublishBatch(batch, metadata=TOKEN, timeout=20)

    codes = [r.error.code if r.HasField("error") else 0 for r in reply.results]
    assert codes == [0, grpc.StatusCode.PERMISSION_DENIED.value[0], 0]
    assert await stored(nc) == 2


async def test_an_atomic_batch_with_a_denied_entry_stores_nothing(
    stub: gateway_pb2_grpc.EventGatewayAsyncStub, nc: Client
) -> None:
    batch = gateway_pb2.PublishBatchRequest(entries=[request("o-1"), paid("o-1")], atomic=True)
    reply = await stub.PublishBatch(batch, metadata=TOKEN, timeout=20)

    codes = [r.error.code for r in reply.results]
    assert codes == [grpc.StatusCode.ABORTED.value[0], grpc.StatusCode.PERMISSION_DENIED.value[0]]
    assert "entries[1] may not be published" in reply.results[0].error.message
    assert await stored(nc) == 0


async def test_publish_stream_is_denied_per_message(
    stub: gateway_pb2_grpc.EventGatewayAsyncStub, nc: Client
) -> None:
    requests = [
        gateway_pb2.PublishBatchRequest(entries=[request("o-1")]),
        gateway_pb2.PublishBatchRequest(entries=[paid("o-2")]),
        gateway_pb2.PublishBatchRequest(entries=[request("o-3"), paid("o-4")], atomic=True),
    ]
    replies = [r async for r in stub.PublishStream(iter(requests), metadata=TOKEN, timeout=20)]

    codes = [[r.error.code for r in reply.results] for reply in replies]
    denied = grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert codes == [[0], [denied], [grpc.StatusCode.ABORTED.value[0], denied]]
    assert await stored(nc) == 1


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": 1_000_000}, "TOKEN_EXPIRED"),
        ({"aud": "someone-else"}, "TOKEN_AUDIENCE_INVALID"),
        ({"iss": "https://evil.example"}, "TOKEN_ISSUER_INVALID"),
        ({"key": "other"}, "TOKEN_SIGNATURE_INVALID"),
        (None, "CREDENTIALS_MISSING"),
        ({"token": "not-a-known-token"}, "TOKEN_INVALID"),
    ],
    ids=["expired", "wrong-audience", "wrong-issuer", "wrong-signature", "missing", "unknown"],
)
async def test_bad_credentials_are_unauthenticated_and_store_nothing(
    stub: gateway_pb2_grpc.EventGatewayAsyncStub,
    files: SecureFiles,
    nc: Client,
    claims: dict[str, object] | None,
    reason: str,
) -> None:
    metadata: tuple[tuple[str, str], ...] = ()
    token = ""
    if claims is not None:
        claims = dict(claims)
        key = ec.generate_private_key(ec.SECP256R1()) if claims.pop("key", None) else None
        token = str(claims.pop("token", "")) or files.jwt(key, **claims)
        metadata = bearer(token)
    batch = gateway_pb2.PublishBatchRequest(entries=[request("o-1")])
    for call in (
        stub.Publish(request("o-1"), metadata=metadata, timeout=20),
        stub.PublishBatch(batch, metadata=metadata, timeout=20),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        detail = info(refused.value)
        assert (detail.reason, detail.domain) == (reason, "jetgate")
        if token:
            assert token not in str(refused.value)
    assert await stored(nc) == 0


async def test_a_valid_jwt_publishes_what_its_role_allows(
    stub: gateway_pb2_grpc.EventGatewayAsyncStub, files: SecureFiles, nc: Client
) -> None:
    metadata = bearer(files.jwt())
    reply = await stub.Publish(request("o-1"), metadata=metadata, timeout=20)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.Publish(paid(), metadata=metadata, timeout=20)

    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    message = await nc.jetstream().get_msg("ORDERS", reply.sequence)
    assert message.headers is not None
    assert message.headers[wire.PRINCIPAL] == "alice"
    assert await stored(nc) == 1


async def test_a_principal_the_policy_does_not_know_is_denied(
    stub: gateway_pb2_grpc.EventGatewayAsyncStub, files: SecureFiles, nc: Client
) -> None:
    stranger = bearer(files.jwt(sub="mallory", roles=None))
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.Publish(request("o-1"), metadata=stranger, timeout=20)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info(denied.value).metadata["principal"] == "mallory"
    assert await stored(nc) == 0


async def test_health_is_open_and_reflection_needs_credentials(
    secured: Gateway, files: SecureFiles
) -> None:
    async with channel(secured.address, files) as ch:
        health = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=20
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(ch)
        listing = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            [r async for r in reflection.ServerReflectionInfo(iter([listing]), timeout=20)]
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        replies = [
            r
            async for r in reflection.ServerReflectionInfo(
                iter([listing]), metadata=TOKEN, timeout=20
            )
        ]
        names = {s.name for s in replies[0].list_services_response.service}
        assert "jetgate.v1.EventGateway" in names


async def test_reflection_can_be_opened(files: SecureFiles, gateway_config: GatewayConfig) -> None:
    async with (
        serving(files.config(gateway_config, reflection_open=True)) as gateway,
        channel(gateway.address, files) as ch,
    ):
        reflection = reflection_pb2_grpc.ServerReflectionStub(ch)
        listing = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = [r async for r in reflection.ServerReflectionInfo(iter([listing]), timeout=20)]
        assert replies[0].list_services_response.service


async def test_a_plaintext_client_gets_no_answer_from_the_tls_port(
    secured: Gateway, nc: Client
) -> None:
    async with grpc.aio.insecure_channel(secured.address) as ch:
        stub = gateway_pb2_grpc.EventGatewayStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Publish(request("o-1"), metadata=TOKEN, timeout=5)
    assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert await stored(nc) == 0


async def test_mtls_names_the_principal_from_the_certificate(
    files: SecureFiles, gateway_config: GatewayConfig, nc: Client
) -> None:
    async with (
        serving(files.config(gateway_config, mutual=True)) as gateway,
        channel(gateway.address, files, client=True) as ch,
    ):
        stub = gateway_pb2_grpc.EventGatewayStub(ch)
        reply = await stub.Publish(paid("o-1"), timeout=20)
        # A token still wins over the certificate: it may publish OrderPlaced only.
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.Publish(paid("o-2"), metadata=TOKEN, timeout=20)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    message = await nc.jetstream().get_msg("ORDERS", reply.sequence)
    assert message.headers is not None
    assert message.headers[wire.PRINCIPAL] == SPIFFE_ID
    assert await stored(nc) == 1


@pytest.mark.parametrize("client", ["none", "other-ca"])
async def test_mtls_refuses_a_client_without_a_certificate_of_its_ca(
    files: SecureFiles, gateway_config: GatewayConfig, nc: Client, client: str
) -> None:
    async with serving(files.config(gateway_config, mutual=True)) as gateway:
        presented: bool | tuple[bytes, bytes] = False
        if client == "other-ca":
            intruder = trustme.CA().issue_cert("intruder")
            presented = (intruder.private_key_pem.bytes(), intruder.cert_chain_pems[0].bytes())
        async with channel(gateway.address, files, client=presented) as ch:
            stub: gateway_pb2_grpc.EventGatewayAsyncStub = gateway_pb2_grpc.EventGatewayStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Publish(request("o-1"), metadata=TOKEN, timeout=5)
    assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert await stored(nc) == 0


def _sized(size: int) -> gateway_pb2.PublishRequest:
    """A PublishRequest whose OrderPlaced payload serializes to exactly `size` bytes."""
    event = orders_pb2.OrderPlaced(order_id="o-1")
    event.customer_id = "c" * (size - event.ByteSize())
    while event.ByteSize() > size:
        event.customer_id = event.customer_id[:-1]
    assert event.ByteSize() == size
    return request("o-1", message=event)


async def test_the_principal_counts_in_the_size_limit(
    stub: gateway_pb2_grpc.EventGatewayAsyncStub, nc: Client
) -> None:
    envelope = wire.Envelope(
        id=wire.new_event_id(),
        type=PLACED,
        source=gateway_config_source(),
        key="o-1",
        time=datetime.now(UTC),
    )
    without = wire.encoded_headers_size(wire.encode_headers(envelope))
    principal = wire.encoded_headers_size(
        wire.encode_headers(dataclasses.replace(envelope, principal=TOKEN_NAME))
    )
    assert principal > without
    room = nc.max_payload - principal

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Publish(_sized(room + 1), metadata=TOKEN, timeout=20)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await stored(nc) == 0
    reply = await stub.Publish(_sized(room), metadata=TOKEN, timeout=20)
    assert reply.sequence == 1


def gateway_config_source() -> str:
    return "jetgate"  # jetgate.toml's source
