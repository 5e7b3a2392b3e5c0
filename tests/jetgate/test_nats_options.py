"""NatsOptions: settings from the environment and back, secrets kept out of sight, the
nats.connect arguments, permission violations recognised; the gateway's settings."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from gateway import cli as gateway_cli
from gateway.config import load_config
from gateway.workers import WorkerProcesses
from jetgate import nats_options
from jetgate.errors import ConfigurationError
from jetgate.nats_options import NatsOptions

SECRET = "s3cr3t-0f-the-test"


def test_env_round_trip_with_several_servers_and_every_setting(tmp_path: Path) -> None:
    opts = NatsOptions(
        servers=("tls://a:4222", "tls://b:4222"),
        user="gw",
        password=SECRET,
        tls_ca_file="/ca.pem",
        tls_cert_file="/c.pem",
        tls_key_file="/c.key",
        tls_handshake_first=True,
    )
    env = nats_options.to_env(opts)
    assert env["JETGATE_NATS_URL"] == "tls://a:4222,tls://b:4222"
    assert env["JETGATE_NATS_PASSWORD"] == SECRET
    assert nats_options.from_env(env) == opts
    assert nats_options.from_env({}, url="nats://x:1, nats://y:2").servers == (
        "nats://x:1",
        "nats://y:2",
    )


def test_secrets_stay_out_of_repr_and_describe() -> None:
    opts = NatsOptions(servers=(f"nats://u:{SECRET}@h:4222",), token="", user="", creds_file="")
    token = NatsOptions(token=SECRET)
    password = NatsOptions(user="gw", password=SECRET, tls_ca_file="/ca.pem")
    for shown in (repr(token), repr(password), opts.describe(), password.describe()):
        assert SECRET not in shown
    assert password.describe() == "nats://127.0.0.1:4222 (auth: user/password, TLS)"


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"user": "a", "token": "t"}, "choose one of nats_user, nats_token"),
        ({"password": "p"}, "needs nats_user"),
        ({"token": "t", "token_file": "/f"}, "not both"),
        ({"tls_cert_file": "/c.pem"}, "go together"),
        ({"nkey_seed_file": "/a", "creds_file": "/b"}, "choose one of"),
    ],
)
def test_contradictory_settings_are_configuration_errors(
    settings: dict[str, str], complaint: str
) -> None:
    with pytest.raises(ConfigurationError, match=complaint):
        NatsOptions(**settings)  # type: ignore[arg-type]


def test_connect_kwargs_read_secret_files_and_build_tls(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(SECRET + "\n")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    leaf = ca.issue_cert("client.example")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "c.key"))
    kwargs = nats_options.connect_kwargs(
        NatsOptions(
            servers=("nats://a:1", "nats://b:2"),
            token_file=str(tmp_path / "token"),
            tls_ca_file=str(tmp_path / "ca.pem"),
            tls_cert_file=str(tmp_path / "c.pem"),
            tls_key_file=str(tmp_path / "c.key"),
            tls_handshake_first=True,
        )
    )
    assert kwargs["servers"] == ["nats://a:1", "nats://b:2"]
    assert kwargs["token"] == SECRET
    assert isinstance(kwargs["tls"], ssl.SSLContext)
    assert kwargs["tls"].verify_mode == ssl.CERT_REQUIRED
    assert kwargs["tls_handshake_first"] is True


def test_an_unreadable_file_names_the_setting_and_file_not_a_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"nats_password_file .*missing: No such file"):
        nats_options.connect_kwargs(NatsOptions(user="gw", password_file=str(tmp_path / "missing")))
    with pytest.raises(ConfigurationError, match=r"nats_creds_file .*: not a readable file"):
        nats_options.connect_kwargs(NatsOptions(creds_file=str(tmp_path / "none.creds")))
    bad_key = tmp_path / "bad.key"
    bad_key.write_text(SECRET)
    with pytest.raises(ConfigurationError, match="nats_tls_cert_file") as raised:
        nats_options.connect_kwargs(
            NatsOptions(tls_cert_file=str(bad_key), tls_key_file=str(bad_key))
        )
    assert SECRET not in str(raised.value)


def test_permission_violations_are_recognised() -> None:
    seen = Exception('nats: permissions violation for publish to "orders.orderpaid.o-1"')
    assert nats_options.permission_violation(seen) == ("publish", "orders.orderpaid.o-1")
    sub = Exception('nats: permissions violation for subscription to "_inbox.>"')
    assert nats_options.permission_violation(sub) == ("subscription", "_inbox.>")
    assert nats_options.permission_violation(Exception("nats: stale connection")) is None


def test_gateway_settings_toml_array_env_secrets_and_no_secret_flag(tmp_path: Path) -> None:
    path = tmp_path / "jetgate.toml"
    path.write_text(
        '[gateway]\nnats_url = ["tls://a:4222", "tls://b:4222"]\nnats_user = "gw"\n'
        'nats_tls_ca_file = "/ca.pem"\n'
    )
    config = load_config(path, env={"JETGATE_NATS_PASSWORD": SECRET})
    assert config.nats_url == "tls://a:4222,tls://b:4222"
    assert config.nats_options() == NatsOptions(
        servers=("tls://a:4222", "tls://b:4222"), user="gw", password=SECRET, tls_ca_file="/ca.pem"
    )
    assert SECRET not in repr(config)
    for command in (["serve"], ["up"], ["consume", "m:g"], ["dlq", "list", "--group", "g"]):
        with pytest.raises(SystemExit):  # no flag, not even an abbreviation of a *_file one
            gateway_cli._parser().parse_args([*command, "--nats-password", SECRET])
    assert gateway_cli._parser().parse_args(["serve", "--nats-token-file", "/t"]).nats_token_file
    with pytest.raises(ConfigurationError, match="choose one of"):
        load_config(path, env={"JETGATE_NATS_TOKEN": SECRET})


def test_up_workers_get_the_settings_in_their_environment_not_their_command_line() -> None:
    workers = WorkerProcesses(
        ["consumers.demo:billing"],
        nats=NatsOptions(servers=(f"nats://{SECRET}@h:1",), creds_file="/w.creds"),
        gateway_address="127.0.0.1:1",
    )
    assert SECRET not in " ".join(workers.command("consumers.demo:billing"))
    env = nats_options.to_env(workers.nats)
    assert env == {
        "JETGATE_NATS_URL": f"nats://{SECRET}@h:1",
        "JETGATE_NATS_CREDS_FILE": "/w.creds",
    }
