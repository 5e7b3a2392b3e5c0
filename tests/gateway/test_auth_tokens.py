"""Bearer tokens through the auth interceptor on a real TLS grpc.aio server.

Static API tokens (hashed in a TOML file) and JWTs (PyJWT, keys from a JWKS or PEM file):
a valid one maps to its principal and roles; expired, not yet valid, wrong audience, wrong
issuer, wrong signature, a disallowed algorithm, unknown, malformed or missing credentials
each give UNAUTHENTICATED with their ErrorInfo reason (domain jetgate) and never echo the
token. Health stays open without credentials.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import jwt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm

from gateway.auth.authenticator import Authenticator, AuthSettings, bearer_token
from gateway.auth.interceptor import AuthInterceptor
from gateway.auth.jwts import JwtKeyError, JwtSettings, JwtVerifier, load_keys
from gateway.auth.peer import PEM_CERT_KEY, PeerIdentitySettings
from gateway.auth.principal import AuthError, Reason
from gateway.auth.tls import TlsSettings, server_credentials
from gateway.auth.tokens import TokenFileError, hash_token, new_token, parse_tokens
from tests.gateway.secure_serving import (
    SERVER_NAME,
    channel,
    error_info,
    health_check,
    serving,
    whoami,
    write,
)
from tests.support.eventually import eventually

ISSUER = "https://issuer.example.org"
AUDIENCE = "jetgate"
KID = "key-1"


@dataclass(frozen=True, slots=True, kw_only=True)
class Secured:
    port: int
    ca: trustme.CA
    api_token: str
    key: ec.EllipticCurvePrivateKey


def sign(key: Any, **overrides: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now + 600,
        "nbf": now - 10,
        "roles": ["order-writer", "auditor"],
    }
    headers = {"kid": KID, **overrides.pop("headers", {})}
    headers = {name: value for name, value in headers.items() if value is not None}
    alg = overrides.pop("alg", "ES256")
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def jwks(key: ec.EllipticCurvePrivateKey, kid: str = KID) -> bytes:
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return json.dumps({"keys": [{**jwk, "kid": kid, "alg": "ES256", "use": "sig"}]}).encode()


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    ca = trustme.CA()
    leaf = ca.issue_cert(SERVER_NAME)
    tls = TlsSettings(
        cert_file=write(tmp_path / "s.pem", b"".join(b.bytes() for b in leaf.cert_chain_pems)),
        key_file=write(tmp_path / "s.key", leaf.private_key_pem.bytes()),
    )
    api_token = new_token()
    tokens = (
        f'[[tokens]]\nname = "orders-service"\nsha256 = "{hash_token(api_token)}"\n'
        'roles = ["order-writer"]\n'
        f'[[tokens]]\nname = "other"\nsha256 = "{hash_token(new_token())}"\n'
    )
    key = ec.generate_private_key(ec.SECP256R1())
    settings = AuthSettings(
        tokens_file=write(tmp_path / "tokens.toml", tokens.encode()),
        jwt=JwtSettings(
            issuer=ISSUER,
            audience=AUDIENCE,
            algorithms=("ES256",),
            jwks_file=write(tmp_path / "jwks.json", jwks(key)),
            roles_claim="roles",
        ),
    )
    interceptor = AuthInterceptor(Authenticator(settings))
    async with serving(server_credentials(tls), interceptors=[interceptor]) as port:
        yield Secured(port=port, ca=ca, api_token=api_token, key=key)


async def call_as(secured: Secured, authorization: str | None) -> str:
    metadata = [] if authorization is None else [("authorization", authorization)]
    async with channel(secured.port, ca=secured.ca) as ch:
        return await whoami(ch, metadata)


async def refused(secured: Secured, authorization: str | None) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call_as(secured, authorization)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    status, info = error_info(caught.value)
    assert status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert info.domain == "jetgate"
    secret = (authorization or "").partition(" ")[2].strip()
    if secret:
        assert secret not in (caught.value.details() or "")
        assert secret not in str(status)
    return str(info.reason)


async def test_api_token_and_jwt_map_to_principals(secured: Secured) -> None:
    assert await call_as(secured, f"Bearer {secured.api_token}") == "orders-service"
    assert await call_as(secured, f"bearer {sign(secured.key)}") == "alice"
    async with channel(secured.port, ca=secured.ca) as ch:
        token = sign(secured.key, sub="bob")
        assert await whoami(ch, [("authorization", f"Bearer {token}")], stream=True) == "bob"


async def test_health_is_open_without_credentials(secured: Secured) -> None:
    async with channel(secured.port, ca=secured.ca) as ch:
        assert await health_check(ch) == 1


async def test_missing_and_malformed_credentials(secured: Secured) -> None:
    assert await refused(secured, None) == Reason.CREDENTIALS_MISSING
    assert await refused(secured, f"Basic {secured.api_token}") == Reason.CREDENTIALS_MALFORMED
    assert await refused(secured, "Bearer") == Reason.CREDENTIALS_MALFORMED
    assert await refused(secured, f"Bearer {new_token()}") == Reason.TOKEN_INVALID
    assert await refused(secured, "Bearer not.a.jwt") == Reason.TOKEN_INVALID


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 3600}, Reason.TOKEN_EXPIRED),
        ({"nbf": int(time.time()) + 3600}, Reason.TOKEN_NOT_YET_VALID),
        ({"aud": "someone-else"}, Reason.TOKEN_AUDIENCE_INVALID),
        ({"iss": "https://evil.example.org"}, Reason.TOKEN_ISSUER_INVALID),
        ({"exp": None}, Reason.TOKEN_INVALID),
        ({"sub": None}, Reason.TOKEN_INVALID),
        ({"headers": {"kid": "unknown"}}, Reason.TOKEN_SIGNATURE_INVALID),
    ],
)
async def test_jwt_claims_are_checked(
    secured: Secured, claims: dict[str, Any], reason: Reason
) -> None:
    assert await refused(secured, f"Bearer {sign(secured.key, **claims)}") == reason


async def test_jwt_signed_by_another_key_or_algorithm_is_refused(secured: Secured) -> None:
    impostor = ec.generate_private_key(ec.SECP256R1())
    assert await refused(secured, f"Bearer {sign(impostor)}") == Reason.TOKEN_SIGNATURE_INVALID
    # HMAC with the public key as secret (algorithm confusion) is not an accepted algorithm.
    public_pem = secured.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    # PyJWT refuses to make one: built by hand as an attacker would.
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    claims = {"sub": "mallory", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60}
    signing_input = (
        b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": KID}).encode())
        + "."
        + b64(json.dumps(claims).encode())
    )
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    hs = f"{signing_input}.{b64(mac)}"
    assert await refused(secured, f"Bearer {hs}") == Reason.TOKEN_INVALID


def test_jwt_from_pem_key_file_and_rs256(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    settings = JwtSettings(
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=("RS256",),
        public_key_file=write(tmp_path / "jwt.pem", pem),
        name_claim="client_id",
        roles_claim="scope",
    )
    auth = Authenticator(AuthSettings(jwt=settings))
    token = sign(key, alg="RS256", headers={"kid": None}, client_id="svc-a", scope="a b")
    principal = auth.authenticate([("authorization", f"Bearer {token}")], {})
    assert (principal.name, principal.roles) == ("svc-a", frozenset({"a", "b"}))
    assert principal.method == "jwt"
    with pytest.raises(AuthError) as wrong:
        auth.authenticate([("authorization", f"Bearer {sign(key, alg='RS384')}")], {})
    assert wrong.value.reason is Reason.TOKEN_INVALID


def test_jwt_settings_and_key_files_are_validated(tmp_path: Path) -> None:
    jwks_file = tmp_path / "k.json"
    with pytest.raises(ValueError, match="only"):
        JwtSettings(issuer=ISSUER, audience=AUDIENCE, algorithms=("HS256",), jwks_file=jwks_file)
    with pytest.raises(ValueError, match="exactly one"):
        JwtSettings(issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(ValueError, match="issuer and audience"):
        JwtSettings(issuer="", audience=AUDIENCE, jwks_file=jwks_file)
    settings = JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=jwks_file)
    write(jwks_file, b"{}")
    with pytest.raises(JwtKeyError, match="not a JWKS"):
        load_keys(settings)
    private = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()), as_dict=True)
    write(jwks_file, json.dumps({"keys": [private]}).encode())
    with pytest.raises(JwtKeyError, match="private key"):
        load_keys(settings)


def test_bearer_header_parsing() -> None:
    assert bearer_token([("user-agent", "x")]) is None
    assert bearer_token([("authorization", "Bearer  abc ")]) == "abc"
    with pytest.raises(AuthError) as twice:
        bearer_token([("authorization", "Bearer a"), ("authorization", "Bearer b")])
    assert twice.value.reason is Reason.CREDENTIALS_MALFORMED


def test_token_file_is_validated() -> None:
    digest = hash_token("t")
    store = parse_tokens(
        f'[[tokens]]\nname = "a"\nsha256 = "{hash_token("x")}"\n'
        f'[[tokens]]\nname = "b"\nsha256 = "{digest.upper()}"\nroles = ["r"]\n'
    )
    assert len(store) == 2
    found = store.lookup("t")
    assert found is not None
    assert (found.name, found.roles) == ("b", frozenset({"r"}))
    assert store.lookup("y") is None
    bad = {
        '[[tokens]]\nname = "a"\nsha256 = "abc"\n': "64 hex digits",
        f'[[tokens]]\nname = "a"\nsha256 = "{digest}"\n' * 2: "twice",
        f'[[tokens]]\nname = "a"\nsha256 = "{digest}"\ntoken = "t"\n': "unknown keys",
        f'[[tokens]]\nname = "a"\nsha256 = "{digest}"\nroles = "r"\n': "roles",
        "tokens = 3\n": "array of tables",
        "[[tokens]\n": "not valid TOML",
    }
    for text, message in bad.items():
        with pytest.raises(TokenFileError, match=message):
            parse_tokens(text, source="tokens.toml")


def test_reflection_is_open_only_when_set(tmp_path: Path) -> None:
    tokens = write(tmp_path / "tokens.toml", b"")
    method = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
    closed = AuthInterceptor(Authenticator(AuthSettings(tokens_file=tokens)))
    opened = AuthInterceptor(Authenticator(AuthSettings(tokens_file=tokens, reflection_open=True)))
    assert closed.is_open("/grpc.health.v1.Health/Check")
    assert not closed.is_open(method)
    assert opened.is_open(method)
    assert not opened.is_open("/jetgate.v1.Gateway/Publish")


def test_a_bad_token_is_refused_even_with_a_client_certificate(tmp_path: Path) -> None:
    cert = trustme.CA().issue_cert("orders.shop.svc").cert_chain_pems[0].bytes()
    tokens = write(tmp_path / "tokens.toml", b"")
    auth = Authenticator(AuthSettings(peer=PeerIdentitySettings(), tokens_file=tokens))
    context = {PEM_CERT_KEY: [cert]}
    assert auth.authenticate([], context).name == "orders.shop.svc"
    with pytest.raises(AuthError) as caught:
        auth.authenticate([("authorization", "Bearer nope")], context)
    assert caught.value.reason is Reason.TOKEN_INVALID


def test_token_and_key_files_follow_their_files(tmp_path: Path) -> None:
    first, second = new_token(), new_token()
    tokens = write(
        tmp_path / "tokens.toml",
        f'[[tokens]]\nname = "a"\nsha256 = "{hash_token(first)}"\n'.encode(),
    )
    old_key, new_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    keys = write(tmp_path / "jwks.json", jwks(old_key))
    settings = AuthSettings(
        tokens_file=tokens,
        jwt=JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=keys),
        reload_interval=0,
    )
    auth = Authenticator(settings)

    def name(token: str) -> str:
        return auth.authenticate([("authorization", f"Bearer {token}")], {}).name

    old_jwt = sign(old_key)
    assert name(first) == "a"
    assert name(old_jwt) == "alice"  # and remembered as verified
    write(tokens, f'[[tokens]]\nname = "b"\nsha256 = "{hash_token(second)}"\n'.encode())
    write(keys, jwks(new_key))
    assert name(second) == "b"
    assert name(sign(new_key)) == "alice"
    for revoked in (first, old_jwt):
        with pytest.raises(AuthError):
            name(revoked)
    write(tokens, b"[[tokens]\n")  # broken: the last good tokens stay
    assert name(second) == "b"


async def test_verified_jwts_are_remembered_until_they_expire(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    settings = JwtSettings(
        issuer=ISSUER, audience=AUDIENCE, jwks_file=write(tmp_path / "k.json", jwks(key)), leeway=0
    )
    keys = load_keys(settings)
    verifier = JwtVerifier(settings, lambda: keys)
    decoded: list[str] = []
    real_decode = jwt.decode

    def counting_decode(token: str, *args: Any, **kwargs: Any) -> Any:
        decoded.append(token)
        return real_decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    token = sign(key, exp=int(time.time()) + 2)
    assert verifier.verify(token).name == "alice"
    assert verifier.verify(token).name == "alice"
    assert decoded == [token]  # the second call was answered from the cache

    def expired() -> bool:
        try:
            verifier.verify(token)
        except AuthError as exc:
            return exc.reason is Reason.TOKEN_EXPIRED
        return False

    await eventually(expired, within=30, what="the remembered token expires")
