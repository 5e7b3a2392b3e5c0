"""One call that says who is calling: bearer token first, else the mTLS certificate.

A call presenting `authorization: Bearer <token>` is judged by that token alone: a static
API token (when a token file is set) or else a JWT (when JWT settings are set). A bad token
is refused even when the call also came with a valid client certificate: a caller that
sends a token means it, and silently falling back would hide its mistake. Without a token,
the mTLS client certificate names the principal (when peer identities are on). Without
either: CREDENTIALS_MISSING. Anything else in `authorization` (another scheme, two headers)
is CREDENTIALS_MALFORMED.

Token and key files follow their files (see `gateway.auth.files`), checked at most every
`reload_interval` seconds on the call path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.auth.files import ReloadingFiles
from gateway.auth.jwts import JwtKeys, JwtSettings, JwtVerifier, load_keys
from gateway.auth.peer import PeerIdentitySettings, peer_principal
from gateway.auth.principal import AuthError, Principal, Reason
from gateway.auth.tokens import TokenStore, load_tokens

AUTHORIZATION = "authorization"
_BEARER = "bearer"


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthSettings:
    """Which ways of authenticating are on; none set means authentication is off."""

    peer: PeerIdentitySettings | None = None
    tokens_file: Path | None = None
    jwt: JwtSettings | None = None
    # Reflection lists the services and types; open to anyone only when asked for.
    reflection_open: bool = False
    reload_interval: float = 1.0

    def __post_init__(self) -> None:
        if self.reload_interval < 0:
            raise ValueError("auth: reload_interval must be >= 0")

    @property
    def enabled(self) -> bool:
        """True when any way of authenticating is configured (then the policy denies by default)."""
        return self.peer is not None or self.tokens_file is not None or self.jwt is not None


Metadata = Iterable[tuple[str, str | bytes]]


def bearer_token(metadata: Metadata) -> str | None:
    """The token of the call's `authorization: Bearer` header; None without the header."""
    values = [value for key, value in metadata if key.lower() == AUTHORIZATION]
    if not values:
        return None
    if len(values) > 1:
        raise AuthError(Reason.CREDENTIALS_MALFORMED, "more than one authorization header")
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != _BEARER or not token or " " in token:
        raise AuthError(
            Reason.CREDENTIALS_MALFORMED, "the authorization header must be 'Bearer <token>'"
        )
    return token


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


class Authenticator:
    """Turns a call's metadata and TLS auth context into a `Principal` (or AuthError).

    Construct once at start-up: reads the token and key files (raising if broken).
    """

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._tokens: ReloadingFiles[TokenStore] | None = None
        self._jwt: JwtVerifier | None = None
        self._jwt_keys: ReloadingFiles[JwtKeys] | None = None
        if settings.tokens_file is not None:
            path = settings.tokens_file
            self._tokens = ReloadingFiles(
                [path],
                lambda: load_tokens(path),
                what="API tokens",
                min_interval=settings.reload_interval,
            )
        if settings.jwt is not None:
            jwt_settings = settings.jwt
            keys = ReloadingFiles(
                [jwt_settings.key_file],
                lambda: load_keys(jwt_settings),
                what="JWT keys",
                min_interval=settings.reload_interval,
            )
            self._jwt_keys = keys
            self._jwt = JwtVerifier(jwt_settings, keys.current)

    def refresh(self) -> None:
        """Re-read changed token and key files now (e.g. on SIGHUP)."""
        for files in (self._tokens, self._jwt_keys):
            if files is not None:
                files.refresh()

    def authenticate(
        self, metadata: Metadata, auth_context: Mapping[str, Iterable[bytes]]
    ) -> Principal:
        """The caller's principal; raises AuthError (UNAUTHENTICATED) otherwise."""
        token = bearer_token(metadata)
        if token is not None:
            return self._token_principal(token)
        if self.settings.peer is not None:
            principal = peer_principal(auth_context, self.settings.peer)
            if principal is not None:
                return principal
        raise AuthError(Reason.CREDENTIALS_MISSING, "this call needs credentials")

    def _token_principal(self, token: str) -> Principal:
        if self._tokens is not None:
            principal = self._tokens.current().lookup(token)
            if principal is not None:
                return principal
        if self._jwt is not None and _looks_like_jwt(token):
            return self._jwt.verify(token)
        if self._tokens is None and self._jwt is None:
            raise AuthError(Reason.TOKEN_INVALID, "this gateway accepts no bearer tokens")
        raise AuthError(Reason.TOKEN_INVALID, "the token is not known")
