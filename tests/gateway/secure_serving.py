"""Support for the gateway.auth tests: certificates, a real TLS grpc.aio server, a client.

The server serves the standard health service and a tiny `jetgate.test.Whoami` service
whose methods answer with the principal the auth interceptor left for them (bytes in,
bytes out: no stubs needed).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import grpc.aio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from gateway.auth.interceptor import current_principal

SERVER_NAME = "localhost"
WHOAMI = "/jetgate.test.Whoami/Get"
WHOAMI_STREAM = "/jetgate.test.Whoami/Stream"
NOBODY = b"<none>"


def write(path: Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (a new inode, as a rotation by rename does)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def uri_cert(ca: trustme.CA, uri: str, *, common_name: str = "uri-client") -> tuple[bytes, bytes]:
    """(key PEM, cert PEM) of a client certificate with a URI SAN (trustme makes none)."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(uri), x509.DNSName("orders.shop.svc")]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


async def _whoami(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    principal = current_principal.get()
    return NOBODY if principal is None else principal.name.encode()


async def _whoami_stream(
    request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
) -> AsyncIterator[bytes]:
    for _ in range(2):
        yield await _whoami(request, context)


_WHOAMI = grpc.method_handlers_generic_handler(
    "jetgate.test.Whoami",
    {
        "Get": grpc.unary_unary_rpc_method_handler(_whoami),
        "Stream": grpc.unary_stream_rpc_method_handler(_whoami_stream),
    },
)


@asynccontextmanager
async def serving(
    credentials: grpc.ServerCredentials | None,
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> AsyncIterator[int]:
    """A grpc.aio server on 127.0.0.1 (TLS with `credentials`, else plaintext); its port."""
    server = grpc.aio.server(interceptors=interceptors)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    server.add_generic_rpc_handlers((_WHOAMI,))
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


@asynccontextmanager
async def channel(
    port: int,
    *,
    ca: trustme.CA | None,
    client: trustme.LeafCert | tuple[bytes, bytes] | None = None,
) -> AsyncIterator[grpc.aio.Channel]:
    """A client channel: TLS trusting `ca` (plaintext if None), presenting `client` if set."""
    target = f"127.0.0.1:{port}"
    if ca is None:
        ch = grpc.aio.insecure_channel(target)
    else:
        key = chain = None
        if isinstance(client, trustme.LeafCert):
            key = client.private_key_pem.bytes()
            chain = b"".join(blob.bytes() for blob in client.cert_chain_pems)
        elif client is not None:
            key, chain = client
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca.cert_pem.bytes(), private_key=key, certificate_chain=chain
        )
        options = (("grpc.ssl_target_name_override", SERVER_NAME),)
        ch = grpc.aio.secure_channel(target, creds, options=options)
    try:
        yield ch
    finally:
        await ch.close()


async def whoami(
    ch: grpc.aio.Channel, metadata: Sequence[tuple[str, str]] = (), *, stream: bool = False
) -> str:
    """The principal name the server saw for this call (`<none>` for none)."""
    if stream:
        streaming: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = ch.unary_stream(WHOAMI_STREAM)
        names = {r.decode() async for r in streaming(b"", metadata=tuple(metadata), timeout=20)}
        assert len(names) == 1, names
        return names.pop()
    unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = ch.unary_unary(WHOAMI)
    reply = await unary(b"", metadata=tuple(metadata), timeout=20)
    return reply.decode()


async def health_check(ch: grpc.aio.Channel, *, deadline: float = 20) -> int:
    """The health service's status for the server (SERVING is 1)."""
    stub = health_pb2_grpc.HealthStub(ch)
    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=deadline)
    return int(reply.status)


def error_info(
    error: grpc.aio.AioRpcError,
) -> tuple[status_pb2.Status, error_details_pb2.ErrorInfo]:
    """The google.rpc.Status of a failed call and its ErrorInfo detail."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            assert isinstance(value, bytes)
            status = status_pb2.Status.FromString(value)
            for item in status.details:
                info = error_details_pb2.ErrorInfo()
                if item.Unpack(info):
                    return status, info
    raise AssertionError(f"no ErrorInfo in {error!r}")
