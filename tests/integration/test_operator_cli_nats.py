"""`jetgate events`, `jetgate streams` and `jetgate groups` as real processes against a
nats-server that wants credentials: they connect with the gateway's NATS settings (its
TOML file, `JETGATE_NATS_*`, non-secret `--nats-*` flags); wrong credentials or a user
without the JetStream API end them with exit code 1 naming the cause, never the secret."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import nats
import pytest
from google.protobuf import json_format

from gateway.embedded import NatsServer
from jetgate.examples.orders.v1 import orders_pb2
from tests.integration.jetgate_up import REPO, WAIT, jetgate
from tests.integration.secured_nats import PASSWORD, clean_env, user, users_block

TOKEN = "t0k3n-5521-secret"
PLACED = orders_pb2.OrderPlaced(order_id="o-42", customer_id="c-7")


def _jetgate(args: Sequence[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [jetgate(), *args],
        cwd=REPO,
        env={k: v for k, v in clean_env(env).items() if k != "NO_COLOR"},
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
        stdin=subprocess.DEVNULL,
        check=False,
    )


async def _store_one_event(servers: str, **credentials: str) -> None:
    nc = await nats.connect(servers, **credentials)
    try:
        js = nc.jetstream()
        await js.add_stream(name="ORDERS", subjects=["orders.>"])
        await js.publish("orders.OrderPlaced.o-42", PLACED.SerializeToString())
        await js.add_consumer("ORDERS", durable_name="billing")
    finally:
        await nc.close()


@pytest.fixture
def users_server(tmp_path: Path) -> Iterator[NatsServer]:
    """Password users: `app` may do anything, `nojs` may not use the JetStream API."""
    config = users_block(user("app"), user("nojs", publish_deny=["$JS.API.>"]))
    with NatsServer(tmp_path / "nats-users", config=config) as server:
        yield server


def _config_file(tmp_path: Path, server: NatsServer, name: str) -> Path:
    """The demo configuration plus the NATS URL, user and password file of user `name`."""
    password_file = tmp_path / "nats-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    demo = (REPO / "jetgate.toml").read_text()
    settings = (
        f'nats_url = "{server.url}"\nnats_user = "{name}"\nnats_password_file = "{password_file}"\n'
    )
    config = tmp_path / "jetgate.toml"
    config.write_text(demo.replace("[gateway]\n", "[gateway]\n" + settings, 1))
    return config


def _verdict(done: subprocess.CompletedProcess[str], command: str) -> str:
    lines = [line for line in done.stderr.splitlines() if line.startswith(f"jetgate {command}:")]
    assert len(lines) == 1, done.stderr
    return lines[0].lower()


async def test_credentials_from_the_gateway_config_file(
    tmp_path: Path, users_server: NatsServer
) -> None:
    await _store_one_event(users_server.url, user="app", password=PASSWORD)
    config = str(_config_file(tmp_path, users_server, "app"))

    events = _jetgate(["events", "ORDERS", "--json", "--config", config], {})
    streams = _jetgate(["streams", "--json", "--config", config], {})
    groups = _jetgate(["groups", "--json", "--config", config], {})

    assert events.returncode == 0, events.stderr
    [row] = [json.loads(line) for line in events.stdout.splitlines()]
    assert json_format.ParseDict(row["payload"], orders_pb2.OrderPlaced()) == PLACED
    assert streams.returncode == 0, streams.stderr
    assert [json.loads(line)["stream"] for line in streams.stdout.splitlines()] == ["ORDERS"]
    assert groups.returncode == 0, groups.stderr
    assert [json.loads(line)["group"] for line in groups.stdout.splitlines()] == ["billing"]


async def test_user_flag_with_the_password_from_the_environment(users_server: NatsServer) -> None:
    await _store_one_event(users_server.url, user="app", password=PASSWORD)
    flags = ["--nats-url", users_server.url, "--nats-user", "app"]
    env = {"JETGATE_NATS_PASSWORD": PASSWORD}

    for command in (["events", "ORDERS", "--json"], ["streams"], ["groups", "--json"]):
        done = _jetgate([*command, *flags], env)
        assert done.returncode == 0, (command, done.stderr)
        assert "ORDERS" in done.stdout or "o-42" in done.stdout, done.stdout


@pytest.mark.parametrize("command", [["events", "ORDERS"], ["streams"], ["groups"]])
def test_a_wrong_password_exits_1_naming_the_cause(
    users_server: NatsServer, command: list[str]
) -> None:
    env = {
        "JETGATE_NATS_URL": users_server.url,
        "JETGATE_NATS_USER": "app",
        "JETGATE_NATS_PASSWORD": "wrong-" + PASSWORD,
    }
    done = _jetgate(command, env)

    assert done.returncode == 1, done.stderr
    assert "nats refused the credentials (authorization violation)" in _verdict(done, command[0])
    assert PASSWORD not in done.stdout + done.stderr


@pytest.mark.parametrize("command", [["events", "ORDERS"], ["streams"], ["groups"]])
def test_a_user_without_the_jetstream_api_exits_1_naming_the_cause(
    tmp_path: Path, users_server: NatsServer, command: list[str]
) -> None:
    config = str(_config_file(tmp_path, users_server, "nojs"))
    done = _jetgate([*command, "--config", config], {})

    assert done.returncode == 1, done.stderr
    assert "permissions violation for publish on '$js.api." in _verdict(done, command[0])
    assert PASSWORD not in done.stdout + done.stderr


async def test_a_token_from_the_environment_and_a_wrong_one(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "nats-token", token=TOKEN) as server:
        await _store_one_event(server.url, token=TOKEN)
        good = _jetgate(["streams", "--json"], {"JETGATE_NATS_TOKEN": TOKEN} | _url(server))
        bad = _jetgate(["groups"], {"JETGATE_NATS_TOKEN": "not-" + TOKEN} | _url(server))

    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["messages"] == 1
    assert bad.returncode == 1, bad.stderr
    assert "nats refused the credentials" in _verdict(bad, "groups")
    assert TOKEN not in bad.stdout + bad.stderr


def _url(server: NatsServer) -> dict[str, str]:
    return {"JETGATE_NATS_URL": server.url}


@pytest.mark.parametrize("command", [["events", "ORDERS"], ["streams"], ["groups"]])
def test_no_flag_takes_a_secret_even_abbreviated(command: list[str]) -> None:
    """`--nats-password` and `--nats-token` do not exist, and may not pass for the `_file`
    flags: a secret on a command line is readable by every local user."""
    for flag in ("--nats-password", "--nats-token"):
        done = _jetgate([*command, flag, PASSWORD], {})
        assert done.returncode == 2, done.stderr
        assert "unrecognized arguments" in done.stderr
