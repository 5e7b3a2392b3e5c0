"""jetgate.client through a secured gateway (TLS, mTLS, tokens, JWTs, a policy) and over
several gateways on one nats-server: real in-process gateways, a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from nats.aio.client import Client as NATS

from gateway.config import GatewayConfig
from gateway.server import Gateway
from jetgate import wire
from jetgate.client import (
    Client,
    ConnectionSettings,
    PermissionDenied,
    Published,
    RetrySettings,
    TlsSettings,
    Unavailable,
    token_file,
)
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import gateway_pb2_grpc
from tests.integration.conftest import order_placed, serving
from tests.integration.secure import API_TOKEN, SPIFFE_ID, TOKEN_NAME, SecureFiles
from tests.integration.test_client import _Silent
from tests.support.eventually import eventually


@pytest.fixture
def files(tmp_path: Path) -> SecureFiles:
    return SecureFiles.make(tmp_path)


@pytest.fixture
async def secured(files: SecureFiles, gateway_config: GatewayConfig) -> AsyncIterator[Gateway]:
    async with serving(files.config(gateway_config)) as gateway:
        yield gateway


def tls(files: SecureFiles, *, mutual: bool = False) -> TlsSettings:
    d = files.dir
    if mutual:
        return TlsSettings(
            ca_file=str(d / "ca.pem"),
            cert_file=str(d / "client.pem"),
            key_file=str(d / "client.key"),
        )
    return TlsSettings(ca_file=str(d / "ca.pem"))


def paid(key: str) -> orders_pb2.OrderPaid:
    return orders_pb2.OrderPaid(order_id=key, payment_id="p-1")


async def stored_messages(nc: NATS, header: str = wire.CE_SOURCE) -> list[tuple[str, str]]:
    """(ce-id, `header`) of every message in ORDERS."""
    js = nc.jetstream()
    info = await js.stream_info("ORDERS")
    found: list[tuple[str, str]] = []
    if not info.state.messages:
        return found
    for sequence in range(info.state.first_seq, info.state.last_seq + 1):
        message = await js.get_msg("ORDERS", sequence)
        headers = message.headers or {}
        found.append((headers[wire.CE_ID], headers[header]))
    return found


async def test_a_token_over_tls_publishes_and_is_the_principal(
    secured: Gateway, files: SecureFiles, nc: NATS
) -> None:
    settings = ConnectionSettings(addresses=(secured.address,), tls=tls(files), token=API_TOKEN)
    async with Client(settings) as client:
        results = await asyncio.gather(
            *(client.publish(order_placed(f"o-{i}"), key=f"o-{i}") for i in range(20))
        )
    assert len({r.sequence for r in results}) == 20
    message = await nc.jetstream().get_msg("ORDERS", results[0].sequence)
    assert (message.headers or {})[wire.PRINCIPAL] == TOKEN_NAME


async def test_a_type_the_policy_does_not_grant_is_denied_at_once_the_others_stored(
    secured: Gateway, files: SecureFiles, nc: NATS
) -> None:
    settings = ConnectionSettings(addresses=(secured.address,), tls=tls(files), token=API_TOKEN)
    async with Client(settings) as client:
        placed, denied = await asyncio.gather(
            client.publish(order_placed("o-1"), key="o-1"),
            client.publish(paid("o-2"), key="o-2"),
            return_exceptions=True,
        )
        streams = client.streams_opened
    assert isinstance(placed, Published)
    assert isinstance(denied, PermissionDenied)
    assert denied.code.name == "PERMISSION_DENIED"
    assert (denied.attempts, denied.retryable) == (1, False)
    assert API_TOKEN not in str(denied)
    assert streams == 1
    assert len(await stored_messages(nc)) == 1


async def test_a_bad_token_is_unauthenticated_and_not_retried(
    secured: Gateway, files: SecureFiles, nc: NATS
) -> None:
    calls = 0

    def provider() -> str:
        nonlocal calls
        calls += 1
        return "jg_not-a-token-the-gateway-knows"

    settings = ConnectionSettings(addresses=(secured.address,), tls=tls(files), token=provider)
    async with Client(settings) as client:
        with pytest.raises(PermissionDenied) as refused:
            await asyncio.wait_for(client.publish(order_placed(), key="o-1"), 30)
        assert client.streams_opened == 1
    assert refused.value.code.name == "UNAUTHENTICATED"
    assert refused.value.attempts == 1
    assert calls == 1
    assert "jg_not-a-token" not in str(refused.value)
    assert await stored_messages(nc) == []


async def test_a_jwt_provider_is_asked_again_for_each_new_stream(
    secured: Gateway, files: SecureFiles, nc: NATS
) -> None:
    issued: list[str] = []

    async def provider() -> str:
        issued.append(files.jwt())
        return issued[-1]

    settings = ConnectionSettings(
        addresses=(secured.address,), tls=tls(files), token=provider, stream_max_age=0.01
    )
    async with Client(settings) as client:

        async def one_more() -> bool:
            await client.publish(order_placed(), key="o-1")
            return client.streams_opened >= 3

        # One at a time, polled: later ones find the stream older than stream_max_age.
        await eventually(one_more)
        streams = client.streams_opened
    assert streams == len(issued) >= 3
    assert len(set(issued)) >= 2  # fresh tokens (their exp moves on by the second)
    principals = {principal for _, principal in await stored_messages(nc, wire.PRINCIPAL)}
    assert principals == {"alice"}


async def test_mtls_with_a_token_file(
    files: SecureFiles, gateway_config: GatewayConfig, nc: NATS, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text(API_TOKEN + "\n")
    async with serving(files.config(gateway_config, mutual=True)) as gateway:
        # The certificate alone: its SPIFFE id may publish every Order* type.
        by_cert = ConnectionSettings(addresses=(gateway.address,), tls=tls(files, mutual=True))
        async with Client(by_cert) as client:
            first = await client.publish(paid("o-1"), key="o-1")
        # A token wins over the certificate: the token's principal may not publish OrderPaid.
        by_token = dataclasses.replace(by_cert, token=token_file(tmp_path / "token"))
        async with Client(by_token) as client:
            second = await client.publish(order_placed("o-2"), key="o-2")
            with pytest.raises(PermissionDenied):
                await client.publish(paid("o-3"), key="o-3")
    js = nc.jetstream()
    assert ((await js.get_msg("ORDERS", first.sequence)).headers or {})[wire.PRINCIPAL] == SPIFFE_ID
    assert ((await js.get_msg("ORDERS", second.sequence)).headers or {})[
        wire.PRINCIPAL
    ] == TOKEN_NAME


def test_a_token_is_never_sent_in_plaintext_off_loopback() -> None:
    with pytest.raises(ValueError, match="plaintext"):
        ConnectionSettings(addresses=("127.0.0.1:1", "10.0.0.7:50051"), token="t")
    ConnectionSettings(addresses=("127.0.0.1:1", "[::1]:2", "localhost:3"), token="t")
    ConnectionSettings(addresses=("10.0.0.7:50051",), token="t", insecure=True)


@contextlib.asynccontextmanager
async def gateways(config: GatewayConfig, count: int) -> AsyncIterator[list[Gateway]]:
    """`count` gateways on the same nats-server, each stamping its own ce-source."""
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(serving(dataclasses.replace(config, source=f"gw-{i}")))
            for i in range(count)
        ]


async def test_events_spread_over_every_gateway(gateway_config: GatewayConfig, nc: NATS) -> None:
    async with gateways(gateway_config, 2) as (a, b):
        settings = ConnectionSettings(addresses=(a.address, b.address), stream_max_age=0.01)
        async with Client(settings) as client:

            async def one_more() -> bool:
                await client.publish(order_placed(), key="o-1")
                return min(client.streams_per_address) >= 2

            await eventually(one_more)
            per_address = client.streams_per_address
    sources = [source for _, source in await stored_messages(nc)]
    assert set(sources) == {"gw-0", "gw-1"}, sources
    assert min(per_address) >= 2, per_address


@pytest.fixture
def dead_address() -> Iterator[str]:
    """A loopback address that refuses connections (bound, never listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


async def test_a_dead_address_is_left_for_the_next_one(gateway: Gateway, dead_address: str) -> None:
    # The first stream goes to the dead address, fails UNAVAILABLE, and the retry opens
    # the next stream on the live one.
    dead = dead_address
    retry = RetrySettings(initial_backoff=0.01, max_backoff=0.1)
    async with Client(ConnectionSettings(addresses=(dead, gateway.address)), retry=retry) as client:
        results = await asyncio.wait_for(
            asyncio.gather(*(client.publish(order_placed(), key=f"o-{i}") for i in range(10))),
            30,
        )
        opened = client.streams_per_address
    assert len({r.sequence for r in results}) == 10
    assert min(opened) >= 1, opened


async def test_a_gateway_stopped_mid_way_loses_and_doubles_nothing(
    gateway_config: GatewayConfig, nc: NATS
) -> None:
    retry = RetrySettings(initial_backoff=0.02, max_backoff=0.2, max_attempts=50, deadline=60)
    doomed = Gateway(dataclasses.replace(gateway_config, source="gw-0"))
    await doomed.start()
    running = True
    try:
        async with serving(dataclasses.replace(gateway_config, source="gw-1")) as survivor:
            addresses = (doomed.address, survivor.address)
            settings = ConnectionSettings(addresses=addresses, stream_max_age=0.05)
            async with Client(settings, retry=retry) as client:
                done: list[Published] = []

                async def publisher(n: int) -> None:
                    for i in range(15):
                        key = f"o-{n}-{i}"
                        done.append(await client.publish(order_placed(key), key=key))

                tasks = [asyncio.create_task(publisher(n)) for n in range(20)]
                # Stop gateway 0 once it stored events, while the publishers go on.
                await eventually(lambda: len(done) >= 60 and min(client.streams_per_address) >= 1)
                running = False
                await doomed.stop(grace=0.2)
                await asyncio.gather(*tasks)
    finally:
        if running:
            await doomed.stop(grace=0.2)

    stored = await stored_messages(nc)
    ids = [event_id for event_id, _ in stored]
    assert len(done) == 300
    assert len(ids) == len(set(ids)) == 300
    assert set(ids) == {r.event_id for r in done}
    assert {source for _, source in stored} == {"gw-0", "gw-1"}


async def test_close_fails_a_batch_in_flight_instead_of_retrying_it() -> None:
    # Before: the cancelled stream's batch was scheduled for a retry that never came, and
    # its publish() waited for ever.
    server = grpc.aio.server()
    gateway_pb2_grpc.add_EventGatewayServicer_to_server(_Silent(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        client = Client(f"127.0.0.1:{port}")
        task = asyncio.create_task(client.publish(order_placed(), key="o-1"))
        await eventually(lambda: client.batches_sent == 1)
        await client.close()
        with pytest.raises(Unavailable):
            await asyncio.wait_for(task, 10)
    finally:
        await server.stop(grace=None)
