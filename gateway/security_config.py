"""Settings of the gRPC listener's security: `[gateway.tls]` and `[gateway.auth]` (issue 10).

Loaded by `gateway.config.load_config` like every other setting: the TOML tables, then
`JETGATE_TLS_<FIELD>` / `JETGATE_AUTH_<FIELD>` variables, then `--tls-<field>` /
`--auth-<field>` flags (`SECURITY_SETTINGS` holds the flat names, e.g. `tls_client_ca`,
`auth_jwt_audience`). Values are checked here; the files themselves are read when the
gateway starts (`gateway.auth`: a file that cannot be used is a ConfigurationError then).

- `[gateway.tls]`: `cert` + `key` serve TLS; `client_ca` adds mTLS (a client certificate
  signed by it is required at the handshake).
- `[gateway.auth]`: who may call. Any of `tokens_file` (static API tokens, hashed), a JWT
  key file (`jwks_file` or `jwt_public_key_file`, with `jwt_issuer` and `jwt_audience`), or
  mTLS client certificates (`cert_identity`: which certificate fields name the principal;
  `[]` makes mTLS transport-only) turns authentication on. Then `policy_file` is required
  (default deny: a principal no grant names may do nothing; a gateway that would deny every
  call is refused at start rather than served), health stays open and reflection is open
  only with `reflection_open = true`.

A non-loopback `listen` without TLS is refused unless `insecure = true` (a GatewayConfig
setting, `--insecure`): see `check_listener`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.auth.authenticator import AuthSettings
from gateway.auth.jwts import JwtSettings
from gateway.auth.peer import IdentitySource, PeerIdentitySettings
from gateway.auth.tls import TlsSettings
from jetgate.errors import ConfigurationError


class SecurityConfigError(ConfigurationError, ValueError):
    """A security setting that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """`[gateway.tls]`: PEM files of the listener; empty cert and key: plaintext."""

    cert: str = ""
    key: str = ""
    client_ca: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise SecurityConfigError("tls: set both cert and key (or neither)")
        if self.client_ca and not self.cert:
            raise SecurityConfigError("tls.client_ca (mTLS) needs tls.cert and tls.key")

    @property
    def enabled(self) -> bool:
        """True when the listener serves TLS."""
        return bool(self.cert)

    def settings(self) -> TlsSettings | None:
        """The `gateway.auth.tls` settings; None for plaintext."""
        if not self.enabled:
            return None
        return TlsSettings(
            cert_file=Path(self.cert),
            key_file=Path(self.key),
            client_ca_file=Path(self.client_ca) if self.client_ca else None,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    """`[gateway.auth]`: how callers authenticate and what the policy grants them."""

    tokens_file: str = ""
    jwks_file: str = ""
    jwt_public_key_file: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_algorithms: tuple[str, ...] = ("RS256", "ES256")
    jwt_name_claim: str = "sub"
    jwt_roles_claim: str = ""
    jwt_leeway: float = 30.0
    # With mTLS: the certificate fields naming the principal, in order; () = none.
    cert_identity: tuple[str, ...] = ("uri", "dns", "cn")
    cert_uri_prefix: str = ""
    policy_file: str = ""
    reflection_open: bool = False
    reload_interval: float = 1.0

    def __post_init__(self) -> None:
        if bad := sorted(set(self.cert_identity) - {s.value for s in IdentitySource}):
            raise SecurityConfigError(f"auth.cert_identity: unknown {bad} (use uri, dns, cn)")
        jwt_given = self.jwks_file or self.jwt_public_key_file or self.jwt_issuer
        if jwt_given or self.jwt_audience:
            self.jwt_settings()  # raises naming what is missing

    def jwt_settings(self) -> JwtSettings | None:
        """The JWT settings; None when no JWT setting is given."""
        if not (self.jwks_file or self.jwt_public_key_file or self.jwt_issuer):
            return None
        try:
            return JwtSettings(
                issuer=self.jwt_issuer,
                audience=self.jwt_audience,
                algorithms=self.jwt_algorithms,
                jwks_file=Path(self.jwks_file) if self.jwks_file else None,
                public_key_file=Path(self.jwt_public_key_file)
                if self.jwt_public_key_file
                else None,
                name_claim=self.jwt_name_claim,
                roles_claim=self.jwt_roles_claim or None,
                leeway=self.jwt_leeway,
            )
        except ValueError as exc:
            raise SecurityConfigError(f"auth.{exc}") from None

    def settings(self, tls: TlsConfig) -> AuthSettings:
        """The authenticator's settings; peer identities only when the listener is mTLS."""
        peer = None
        if tls.client_ca and self.cert_identity:
            peer = PeerIdentitySettings(
                sources=tuple(IdentitySource(s) for s in self.cert_identity),
                uri_prefix=self.cert_uri_prefix,
            )
        try:
            return AuthSettings(
                peer=peer,
                tokens_file=Path(self.tokens_file) if self.tokens_file else None,
                jwt=self.jwt_settings(),
                reflection_open=self.reflection_open,
                reload_interval=self.reload_interval,
            )
        except ValueError as exc:
            raise SecurityConfigError(str(exc)) from None


# Flat names of the fields: `tls_cert`, `auth_policy_file`, ... (variables and flags).
TABLES: Mapping[str, type[Any]] = {"tls": TlsConfig, "auth": AuthConfig}
SECURITY_SETTINGS = tuple(
    f"{table}_{f.name}" for table, cls in TABLES.items() for f in dataclasses.fields(cls)
)

# The help of each flag (`gateway.cli` adds the variable and the default).
SECURITY_HELP = {
    "tls_cert": "PEM certificate chain of the gRPC listener (with tls-key: TLS)",
    "tls_key": "PEM private key of tls-cert (unencrypted)",
    "tls_client_ca": "PEM CA of client certificates: mTLS, clients must present one it signed",
    "auth_tokens_file": "TOML file of API tokens' SHA-256 hashes (bearer tokens; re-read "
    "on change)",
    "auth_jwks_file": "JWKS file of the public keys JWT bearer tokens are verified with",
    "auth_jwt_public_key_file": "PEM public key JWTs are verified with (instead of a JWKS)",
    "auth_jwt_issuer": "required `iss` of JWTs",
    "auth_jwt_audience": "required `aud` of JWTs",
    "auth_jwt_algorithms": "comma-separated JWT algorithms accepted (asymmetric only)",
    "auth_jwt_name_claim": "JWT claim naming the principal",
    "auth_jwt_roles_claim": "JWT claim with the principal's roles (list or space-separated)",
    "auth_jwt_leeway": "clock skew allowed on exp/nbf (e.g. 30s)",
    "auth_cert_identity": "with mTLS: comma-separated certificate fields naming the principal "
    "(uri, dns, cn), in order; '' = certificates name no principal",
    "auth_cert_uri_prefix": "only URI SANs with this prefix name a principal "
    "(e.g. spiffe://example.org/)",
    "auth_policy_file": "TOML policy granting publish on event-type globs to principals and "
    "roles (required with auth; default deny; re-read on change)",
    "auth_reflection_open": "with auth: serve reflection without credentials (true/false)",
    "auth_reload_interval": "how often changed token, key and policy files are looked for",
}


def is_loopback(listen: str) -> bool:
    """True when HOST of `listen` (HOST:PORT) is a loopback address or `localhost`."""
    host = listen.rpartition(":")[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve to anything


def check_listener(listen: str, tls: TlsConfig, *, insecure: bool) -> None:
    """Refuse plaintext gRPC off loopback unless `insecure` says it is meant."""
    if tls.enabled or insecure or is_loopback(listen):
        return
    raise SecurityConfigError(
        f"listen {listen} is reachable from other machines but TLS is off: callers' tokens "
        "and events would cross the network in clear text. Set [gateway.tls] cert and key "
        "(--tls-cert/--tls-key), listen on 127.0.0.1, or pass --insecure (insecure = true) "
        "if a trusted network or a TLS-terminating proxy protects the port"
    )
