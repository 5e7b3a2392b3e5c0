"""`[gateway.tls]` and `[gateway.auth]`: loaded from the TOML file, `JETGATE_TLS_*` /
`JETGATE_AUTH_*` variables and `--tls-*` / `--auth-*` flags (in that order of strength),
checked at load, and the non-loopback plaintext rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import cli
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.security_config import (
    SECURITY_SETTINGS,
    SecurityConfigError,
    TlsConfig,
    check_listener,
    is_loopback,
)
from jetgate.errors import ConfigurationError, exit_code

TOML = """
[gateway]
listen = "0.0.0.0:50051"
insecure = true

[gateway.tls]
cert = "/etc/jetgate/tls.pem"
key = "/etc/jetgate/tls.key"
client_ca = "/etc/jetgate/clients.pem"

[gateway.auth]
tokens_file = "/etc/jetgate/tokens.toml"
jwks_file = "/etc/jetgate/jwks.json"
jwt_issuer = "https://issuer.example.org"
jwt_audience = "jetgate"
jwt_roles_claim = "roles"
jwt_leeway = "10s"
cert_identity = ["uri"]
cert_uri_prefix = "spiffe://example.org/"
policy_file = "/etc/jetgate/policy.toml"
reflection_open = true
"""


def _load(
    tmp_path: Path,
    text: str = TOML,
    *,
    env: dict[str, str] | None = None,
    overrides: dict[str, str] | None = None,
) -> GatewayConfig:
    path = tmp_path / "jetgate.toml"
    path.write_text(text)
    return load_config(path, env=env, overrides=overrides)


def test_the_tables_load_from_the_file(tmp_path: Path) -> None:
    config = _load(tmp_path)
    assert config.insecure is True
    assert config.tls == TlsConfig(
        cert="/etc/jetgate/tls.pem",
        key="/etc/jetgate/tls.key",
        client_ca="/etc/jetgate/clients.pem",
    )
    auth = config.auth
    assert auth.jwt_leeway == 10.0
    assert auth.cert_identity == ("uri",)
    assert auth.reflection_open is True
    settings = auth.settings(config.tls)
    assert settings.enabled
    assert settings.peer is not None
    assert settings.peer.uri_prefix == "spiffe://example.org/"
    assert settings.jwt is not None
    assert settings.jwt.audience == "jetgate"


def test_variables_beat_the_file_and_flags_beat_variables(tmp_path: Path) -> None:
    env = {"JETGATE_TLS_CERT": "/env.pem", "JETGATE_AUTH_JWT_AUDIENCE": "env-aud"}
    config = _load(tmp_path, env=env, overrides={"auth_jwt_audience": "flag-aud"})
    assert config.tls.cert == "/env.pem"
    assert config.auth.jwt_audience == "flag-aud"


def test_every_security_setting_has_a_flag_with_help() -> None:
    args = cli._parser().parse_args(
        ["serve", "--insecure", "--tls-client-ca", "/ca.pem", "--auth-cert-identity", "cn"]
    )
    assert args.insecure == "true"
    assert (args.tls_client_ca, args.auth_cert_identity) == ("/ca.pem", "cn")
    for setting in SECURITY_SETTINGS:
        assert setting in cli.SETTING_HELP, setting
    assert "insecure" in cli.SETTING_HELP


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[gateway.tls]\ncert = "/a.pem"\n', "both cert and key"),
        ('[gateway.tls]\nclient_ca = "/ca.pem"\n', "needs tls.cert"),
        (
            '[gateway.tls]\ncertificate = "/a.pem"\n',
            r"gateway.tls: unknown setting\(s\) certificate",
        ),
        ('[gateway.auth]\njwks_file = "/k.json"\njwt_issuer = "i"\n', "issuer and audience"),
        ('[gateway.auth]\ncert_identity = ["email"]\n', "cert_identity"),
        ('[gateway.auth]\njwt_leeway = "soon"\n', "not a duration"),
        ('[gateway]\ntls = "/a.pem"\n', r"must be a table \(\[gateway.tls\]\)"),
    ],
)
def test_bad_security_settings_are_configuration_errors(
    tmp_path: Path, text: str, says: str
) -> None:
    with pytest.raises(ConfigurationError, match=says) as refused:
        _load(tmp_path, text)
    assert exit_code(refused.value) == 2
    assert isinstance(refused.value, ConfigError | SecurityConfigError)


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.9.9.9:1", True),
        ("localhost:1", True),
        ("[::1]:1", True),
        ("0.0.0.0:1", False),
        ("[::]:1", False),
        ("10.0.0.5:1", False),
        ("gateway.internal:1", False),
    ],
)
def test_loopback_addresses(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


def test_plaintext_off_loopback_needs_insecure() -> None:
    with pytest.raises(SecurityConfigError, match="--insecure"):
        check_listener("0.0.0.0:50051", TlsConfig(), insecure=False)
    check_listener("0.0.0.0:50051", TlsConfig(), insecure=True)
    check_listener("0.0.0.0:50051", TlsConfig(cert="/c.pem", key="/k.pem"), insecure=False)
    check_listener("127.0.0.1:50051", TlsConfig(), insecure=False)
