"""TLS and mTLS listeners of gateway.auth.tls on a real grpc.aio server (trustme certificates).

Covers: TLS serves health, mTLS refuses a client certificate from another CA (and none) at
the handshake, a valid client certificate maps to its principal through the interceptor,
the files are checked at load, and a rotated certificate is picked up without a restart
while a broken rotation keeps the old one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import grpc.aio
import pytest
import trustme

from gateway.auth.authenticator import Authenticator, AuthSettings
from gateway.auth.interceptor import AuthInterceptor
from gateway.auth.peer import IdentitySource, PeerIdentitySettings
from gateway.auth.tls import (
    ReloadingServerCredentials,
    TlsError,
    TlsSettings,
    read_material,
    server_credentials,
)
from tests.gateway.secure_serving import (
    SERVER_NAME,
    channel,
    health_check,
    serving,
    uri_cert,
    whoami,
    write,
)
from tests.support.eventually import eventually

SERVING = 1
SPIFFE_ID = "spiffe://example.org/ns/shop/sa/orders"


def write_server_files(
    directory: Path, ca: trustme.CA, *, client_ca: trustme.CA | None
) -> TlsSettings:
    leaf = ca.issue_cert(SERVER_NAME)
    cert = write(directory / "server.pem", b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key = write(directory / "server.key", leaf.private_key_pem.bytes())
    ca_file = None
    if client_ca is not None:
        ca_file = write(directory / "clients.pem", client_ca.cert_pem.bytes())
    return TlsSettings(cert_file=cert, key_file=key, client_ca_file=ca_file)


@pytest.fixture
def server_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def client_ca() -> trustme.CA:
    return trustme.CA()


async def test_tls_serves_health_and_refuses_plaintext(
    tmp_path: Path, server_ca: trustme.CA
) -> None:
    settings = write_server_files(tmp_path, server_ca, client_ca=None)
    assert not settings.mutual
    async with serving(server_credentials(settings)) as port:
        async with channel(port, ca=server_ca) as ch:
            assert await health_check(ch) == SERVING
        async with channel(port, ca=None) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_check(ch, deadline=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # A client that trusts another CA refuses the server's certificate.
        async with channel(port, ca=trustme.CA()) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as untrusted:
                await health_check(ch, deadline=10)
            assert untrusted.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_refuses_foreign_and_missing_client_certificates(
    tmp_path: Path, server_ca: trustme.CA, client_ca: trustme.CA
) -> None:
    settings = write_server_files(tmp_path, server_ca, client_ca=client_ca)
    assert settings.mutual
    good = client_ca.issue_cert("orders.shop.svc")
    foreign = trustme.CA().issue_cert("orders.shop.svc")
    async with serving(server_credentials(settings)) as port:
        async with channel(port, ca=server_ca, client=foreign) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_check(ch, deadline=10)
            # No RPC ran: the connection never got past the TLS handshake.
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        async with channel(port, ca=server_ca) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await health_check(ch, deadline=10)
            assert missing.value.code() == grpc.StatusCode.UNAVAILABLE
        async with channel(port, ca=server_ca, client=good) as ch:
            assert await health_check(ch) == SERVING


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        ((IdentitySource.URI, IdentitySource.DNS, IdentitySource.CN), SPIFFE_ID),
        ((IdentitySource.DNS, IdentitySource.URI), "orders.shop.svc"),
        ((IdentitySource.CN,), "uri-client"),
    ],
)
async def test_client_certificate_maps_to_principal(
    tmp_path: Path,
    server_ca: trustme.CA,
    client_ca: trustme.CA,
    sources: tuple[IdentitySource, ...],
    expected: str,
) -> None:
    settings = write_server_files(tmp_path, server_ca, client_ca=client_ca)
    auth = AuthSettings(peer=PeerIdentitySettings(sources=sources))
    interceptor = AuthInterceptor(Authenticator(auth))
    client = uri_cert(client_ca, SPIFFE_ID)
    async with (
        serving(server_credentials(settings), interceptors=[interceptor]) as port,
        channel(port, ca=server_ca, client=client) as ch,
    ):
        assert await whoami(ch) == expected
        assert await whoami(ch, stream=True) == expected


def test_material_is_checked_at_load(tmp_path: Path, server_ca: trustme.CA) -> None:
    settings = write_server_files(tmp_path, server_ca, client_ca=None)
    read_material(settings)  # the pair matches
    other = server_ca.issue_cert(SERVER_NAME)
    write(settings.key_file, other.private_key_pem.bytes())
    with pytest.raises(TlsError, match="does not belong"):
        read_material(settings)
    write(settings.key_file, b"not a key")
    with pytest.raises(TlsError, match=r"server\.key: not an unencrypted PEM private key"):
        read_material(settings)
    write(settings.cert_file, b"garbage")
    with pytest.raises(TlsError, match=r"server\.pem: not a PEM certificate"):
        read_material(settings)
    with pytest.raises(TlsError, match="cannot be read"):
        read_material(TlsSettings(cert_file=tmp_path / "none.pem", key_file=settings.key_file))


async def test_rotated_certificate_is_served_and_a_broken_one_is_not(
    tmp_path: Path, server_ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    settings = write_server_files(tmp_path, server_ca, client_ca=None)
    holder = ReloadingServerCredentials(settings, min_interval=0)
    async with serving(holder.credentials()) as port:
        async with channel(port, ca=server_ca) as ch:
            assert await health_check(ch) == SERVING

        # Half a rotation: a new key whose certificate is not written yet.
        new_ca = trustme.CA()
        new_leaf = new_ca.issue_cert(SERVER_NAME)
        with caplog.at_level(logging.ERROR, logger="gateway.auth.files"):
            write(settings.key_file, new_leaf.private_key_pem.bytes())
            assert not holder.refresh()
        assert "keeping the previous version" in caplog.text
        assert "does not belong" in caplog.text
        async with channel(port, ca=server_ca) as ch:
            assert await health_check(ch) == SERVING

        # The rotation completes: new connections get the new certificate.
        write(settings.cert_file, b"".join(b.bytes() for b in new_leaf.cert_chain_pems))

        async def new_certificate_served() -> bool:
            async with channel(port, ca=new_ca) as ch:
                return await health_check(ch, deadline=5) == SERVING

        await eventually(
            new_certificate_served,
            retry_on=(grpc.aio.AioRpcError,),
            what="a new connection gets the rotated certificate",
        )
        async with channel(port, ca=server_ca) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as old:
                await health_check(ch, deadline=10)
            assert old.value.code() == grpc.StatusCode.UNAVAILABLE
