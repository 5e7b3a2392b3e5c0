"""A secured demo gateway for the integration tests: files written into a temp dir.

`SecureFiles.make(tmp_path)` writes a CA (trustme) with the server's certificate, an mTLS
client certificate (URI SAN `spiffe://jetgate.test/orders`), an API token file, an ES256
public key for JWTs and the policy below; `config()` turns the demo config into one that
serves TLS (and mTLS with `mutual=True`) with all of it. `channel()` connects like a
client would.

The policy: the API token `orders-service` and JWT role `order-writer` may publish only
`OrderPlaced`; the SPIFFE id may publish every `Order*`; nobody else anything.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import jwt
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.auth.tokens import hash_token
from gateway.config import GatewayConfig
from gateway.security_config import AuthConfig, TlsConfig
from tests.gateway.secure_serving import SERVER_NAME, uri_cert

PLACED = "jetgate.examples.orders.v1.OrderPlaced"
SPIFFE_ID = "spiffe://jetgate.test/orders"
TOKEN_NAME = "orders-service"
API_TOKEN = "jg_test-token-of-the-orders-service-0123456789abcdef"
ISSUER = "https://issuer.jetgate.test"
AUDIENCE = "jetgate"

POLICY = f"""
[[grants]]
principals = ["{TOKEN_NAME}"]
roles = ["order-writer"]
publish = ["{PLACED}"]

[[grants]]
principals = ["spiffe://jetgate.test/*"]
publish = ["jetgate.examples.orders.v1.Order*"]
"""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SecureFiles:
    """The files of a secured gateway, and the keys a client needs."""

    dir: Path
    ca: trustme.CA
    client_key: bytes
    client_cert: bytes
    jwt_key: ec.EllipticCurvePrivateKey

    @classmethod
    def make(cls, directory: Path) -> SecureFiles:
        ca = trustme.CA()
        server = ca.issue_cert(SERVER_NAME, "127.0.0.1")
        server.cert_chain_pems[0].write_to_path(str(directory / "server.pem"))
        for blob in server.cert_chain_pems[1:]:
            blob.write_to_path(str(directory / "server.pem"), append=True)
        server.private_key_pem.write_to_path(str(directory / "server.key"))
        ca.cert_pem.write_to_path(str(directory / "ca.pem"))
        client_key, client_cert = uri_cert(ca, SPIFFE_ID)
        (directory / "client.key").write_bytes(client_key)
        (directory / "client.pem").write_bytes(client_cert)
        (directory / "tokens.toml").write_text(
            f'[[tokens]]\nname = "{TOKEN_NAME}"\nsha256 = "{hash_token(API_TOKEN)}"\n'
        )
        jwt_key = ec.generate_private_key(ec.SECP256R1())
        (directory / "jwt.pub.pem").write_bytes(
            jwt_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        (directory / "policy.toml").write_text(POLICY)
        return cls(
            dir=directory,
            ca=ca,
            client_key=client_key,
            client_cert=client_cert,
            jwt_key=jwt_key,
        )

    def config(self, base: GatewayConfig, *, mutual: bool = False, **auth: Any) -> GatewayConfig:
        """`base` serving TLS (mTLS if `mutual`) with tokens, JWTs and the policy."""
        d = self.dir
        tls = TlsConfig(
            cert=str(d / "server.pem"),
            key=str(d / "server.key"),
            client_ca=str(d / "ca.pem") if mutual else "",
        )
        settings: dict[str, Any] = {
            "tokens_file": str(d / "tokens.toml"),
            "jwt_public_key_file": str(d / "jwt.pub.pem"),
            "jwt_issuer": ISSUER,
            "jwt_audience": AUDIENCE,
            "jwt_roles_claim": "roles",
            "jwt_algorithms": ("ES256",),
            "policy_file": str(d / "policy.toml"),
            **auth,
        }
        return dataclasses.replace(base, tls=tls, auth=AuthConfig(**settings))

    def jwt(self, key: Any = None, **claims: Any) -> str:
        """An ES256 JWT for `alice` (role order-writer), `claims` overriding (None drops)."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "sub": "alice",
            "iss": ISSUER,
            "aud": AUDIENCE,
            "exp": now + 600,
            "roles": ["order-writer"],
        }
        for name, value in claims.items():
            if value is None:
                payload.pop(name, None)
            else:
                payload[name] = value
        return jwt.encode(payload, key or self.jwt_key, algorithm="ES256")


def bearer(token: str) -> tuple[tuple[str, str]]:
    """The call metadata of a bearer token."""
    return (("authorization", f"Bearer {token}"),)


@asynccontextmanager
async def channel(
    address: str, files: SecureFiles, *, client: bool | tuple[bytes, bytes] = False
) -> AsyncIterator[grpc.aio.Channel]:
    """A TLS channel trusting the files' CA, presenting the files' client certificate
    (`client=True`) or the (key PEM, chain PEM) given."""
    key = chain = None
    if client is True:
        key, chain = files.client_key, files.client_cert
    elif isinstance(client, tuple):
        key, chain = client
    creds = grpc.ssl_channel_credentials(
        root_certificates=files.ca.cert_pem.bytes(), private_key=key, certificate_chain=chain
    )
    options = (("grpc.ssl_target_name_override", SERVER_NAME),)
    async with grpc.aio.secure_channel(address, creds, options=options) as ch:
        yield ch
