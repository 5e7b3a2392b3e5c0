"""JWT bearer tokens, verified with PyJWT against keys from a JWKS or a PEM file.

Checked on every token: the signature with a key of the file (by `kid` in a JWKS; a JWKS of
one key also takes tokens without a kid), the algorithm against an explicit allow-list,
`exp` (required), `nbf` (when present), `iss` and `aud` (both required and compared with
the settings), with `leeway` seconds for clock skew. The principal name is a claim (`sub` by
default); roles come from an optional claim holding a list of strings or one
space-separated string (like OAuth's `scope`).

A JWKS key serves the algorithm of its `alg` member (PyJWT infers RS256 or ES* from the key
type when it has none: give `alg` for PS* keys); keys of algorithms not accepted are
skipped, and `use: enc` keys are ignored.

Only asymmetric algorithms are accepted: the gateway holds public keys only, so no file it
reads can mint tokens, and the HMAC-with-a-public-key confusion cannot happen. PyJWT checks
the signature before any claim, so a forged token learns nothing about the claims checks.
Error messages are fixed texts, never PyJWT's (which may quote decoded input).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from gateway.auth.principal import AuthError, AuthMethod, Principal, Reason

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


# The public keys of ASYMMETRIC_ALGORITHMS (what a PEM key file may hold).
PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


class JwtKeyError(ValueError):
    """A JWKS or PEM key file that cannot be used (the message names the file)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtSettings:
    """How JWTs are verified and mapped to a principal; exactly one key file."""

    issuer: str
    audience: str
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    jwks_file: Path | None = None
    public_key_file: Path | None = None
    name_claim: str = "sub"
    roles_claim: str | None = None
    leeway: float = 30.0

    def __post_init__(self) -> None:
        if not self.issuer or not self.audience:
            raise ValueError("jwt: issuer and audience are required")
        if (self.jwks_file is None) == (self.public_key_file is None):
            raise ValueError("jwt: set exactly one of jwks_file and public_key_file")
        if not self.algorithms:
            raise ValueError("jwt: algorithms must list at least one algorithm")
        if bad := sorted(set(self.algorithms) - ASYMMETRIC_ALGORITHMS):
            raise ValueError(
                f"jwt: algorithms {bad} not accepted (only {sorted(ASYMMETRIC_ALGORITHMS)})"
            )
        if not self.name_claim or self.roles_claim == "":
            raise ValueError("jwt: name_claim and roles_claim must be claim names")
        if not 0 <= self.leeway <= 300:
            raise ValueError("jwt: leeway must be 0..300 seconds")

    @property
    def key_file(self) -> Path:
        """The one key file (JWKS or PEM)."""
        path = self.jwks_file or self.public_key_file
        assert path is not None  # __post_init__
        return path


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtKeys:
    """Verification keys: by kid (JWKS) or one PEM public key."""

    by_kid: dict[str, jwt.PyJWK]
    single: jwt.PyJWK | PublicKey | None


def _jwks(path: Path, text: str, algorithms: tuple[str, ...]) -> JwtKeys:
    try:
        data = json.loads(text)
        keys = [k for k in data["keys"] if isinstance(k, dict) and k.get("use", "sig") == "sig"]
    except (ValueError, KeyError, TypeError) as exc:
        raise JwtKeyError(f"{path}: not a JWKS document ({{'keys': [...]}})") from exc
    by_kid: dict[str, jwt.PyJWK] = {}
    usable: list[jwt.PyJWK] = []
    for i, raw in enumerate(keys):
        if raw.get("d") is not None:
            raise JwtKeyError(f"{path}: keys[{i}] is a private key; give public keys only")
        try:
            key = jwt.PyJWK(raw)
        except jwt.PyJWTError as exc:
            raise JwtKeyError(f"{path}: keys[{i}] is not a usable public key") from exc
        if key.algorithm_name not in algorithms:
            continue
        usable.append(key)
        if key.key_id is not None:
            by_kid[key.key_id] = key
    if not usable:
        raise JwtKeyError(f"{path}: no signing key for the algorithms {list(algorithms)}")
    return JwtKeys(by_kid=by_kid, single=usable[0] if len(usable) == 1 else None)


def load_keys(settings: JwtSettings) -> JwtKeys:
    """The keys of the settings' key file; raises JwtKeyError or OSError."""
    path = settings.key_file
    data = path.read_bytes()
    if settings.jwks_file is not None:
        return _jwks(path, data.decode("utf-8", errors="replace"), settings.algorithms)
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise JwtKeyError(f"{path}: not a PEM public key") from exc
    if not isinstance(
        public,
        rsa.RSAPublicKey
        | ec.EllipticCurvePublicKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey,
    ):
        raise JwtKeyError(f"{path}: not an RSA, EC or EdDSA public key")
    return JwtKeys(by_kid={}, single=public)


_REASONS: tuple[tuple[type[jwt.PyJWTError], Reason, str], ...] = (
    (jwt.ExpiredSignatureError, Reason.TOKEN_EXPIRED, "the token has expired"),
    (jwt.ImmatureSignatureError, Reason.TOKEN_NOT_YET_VALID, "the token is not valid yet (nbf)"),
    (jwt.InvalidAudienceError, Reason.TOKEN_AUDIENCE_INVALID, "the token is not for this audience"),
    (jwt.InvalidIssuerError, Reason.TOKEN_ISSUER_INVALID, "the token's issuer is not accepted"),
    (jwt.InvalidSignatureError, Reason.TOKEN_SIGNATURE_INVALID, "the token's signature is invalid"),
    (jwt.InvalidAlgorithmError, Reason.TOKEN_INVALID, "the token's algorithm is not accepted"),
)


def _roles(claims: dict[str, Any], claim: str | None) -> frozenset[str]:
    if claim is None or claim not in claims:
        return frozenset()
    value = claims[claim]
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return frozenset(v for v in value if v)
    raise AuthError(Reason.TOKEN_INVALID, f"the token's {claim!r} claim is not a list of roles")


# Verified tokens remembered (a signature check costs ~0.3 ms of CPU for ES256; a client
# sends the same token on every call until it renews it).
CACHE_SIZE = 1024


class JwtVerifier:
    """Verifies JWTs with `settings` and the keys `keys()` returns (e.g. a reloading file).

    A verified token is remembered until its `exp` (without leeway) in a bounded cache that
    is emptied whenever `keys()` returns new keys, so a rotated-out key stops working at
    once. Refused tokens are not remembered.
    """

    def __init__(
        self,
        settings: JwtSettings,
        keys: Callable[[], JwtKeys],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._keys = keys
        self._clock = clock
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._cache_keys: JwtKeys | None = None

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; raises AuthError with the reason otherwise."""
        keys = self._keys()
        if keys is not self._cache_keys:
            self._cache.clear()
            self._cache_keys = keys
        hit = self._cache.get(token)
        if hit is not None and self._clock() < hit[1]:
            return hit[0]
        principal, expires = self._verify(token, keys)
        self._cache.pop(token, None)
        if len(self._cache) >= CACHE_SIZE:
            del self._cache[next(iter(self._cache))]  # the oldest entry
        self._cache[token] = (principal, expires)
        return principal

    def _verify(self, token: str, keys: JwtKeys) -> tuple[Principal, float]:
        s = self.settings
        key = _key(token, keys)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(s.algorithms),
                audience=s.audience,
                issuer=s.issuer,
                leeway=s.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(Reason.TOKEN_INVALID, f"the token has no {exc.claim!r} claim") from exc
        except jwt.PyJWTError as exc:
            for kind, reason, message in _REASONS:
                if isinstance(exc, kind):
                    raise AuthError(reason, message) from exc
            raise AuthError(Reason.TOKEN_INVALID, "the token is not a valid JWT") from exc
        name = claims.get(s.name_claim)
        if not isinstance(name, str) or not name:
            raise AuthError(Reason.TOKEN_INVALID, f"the token has no {s.name_claim!r} string claim")
        principal = Principal(name=name, roles=_roles(claims, s.roles_claim), method=AuthMethod.JWT)
        # PyJWT checked that exp is a number.
        return principal, float(claims["exp"])


def _key(token: str, keys: JwtKeys) -> jwt.PyJWK | PublicKey:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise AuthError(Reason.TOKEN_INVALID, "the token is not a well-formed JWT") from exc
    kid = header.get("kid")
    if isinstance(kid, str) and kid in keys.by_kid:
        return keys.by_kid[kid]
    # A PEM file is one key: the token's kid does not matter. In a JWKS a kid that names
    # no key is refused, even when the set has only one.
    pem = keys.single is not None and not isinstance(keys.single, jwt.PyJWK)
    if keys.single is not None and (pem or kid is None):
        return keys.single
    raise AuthError(Reason.TOKEN_SIGNATURE_INVALID, "the token's signing key is not known")
