"""`jetgate serve` exit codes and its refusal of an unsafe stream change."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nats.aio.client import Client

from gateway.config import GatewayConfig
from gateway.server import Gateway
from tests.integration.conftest import REPO

JETGATE = str(Path(sys.executable).parent / "jetgate")


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JETGATE_")}
    return subprocess.run(
        [JETGATE, *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_configuration_error_exits_2_naming_the_setting() -> None:
    done = _run(
        "serve", "--config", str(REPO / "jetgate.toml"), env={"JETGATE_PUBLISH_TIMEOUT": "soon"}
    )
    assert done.returncode == 2
    assert "publish_timeout" in done.stderr


def test_serve_without_a_nats_url_exits_2() -> None:
    done = _run("serve", "--config", str(REPO / "jetgate.toml"))
    assert done.returncode == 2
    assert "JETGATE_NATS_URL" in done.stderr


async def test_unsafe_stream_change_refuses_to_start_and_changes_nothing(
    gateway_config: GatewayConfig, nats_url: str, nc: Client
) -> None:
    gateway = Gateway(gateway_config)  # creates ORDERS as declared
    await gateway.start()
    await gateway.stop(grace=1.0)
    before = (await nc.jetstream().stream_info("ORDERS")).config

    done = _run(
        "serve",
        "--config",
        str(REPO / "jetgate.toml"),
        "--nats-url",
        nats_url,
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--stream-set",
        "ORDERS.storage=memory",
        "--stream-set",
        "ORDERS.description=changed",
    )

    assert done.returncode == 1
    assert "storage: file -> memory" in done.stderr
    after = (await nc.jetstream().stream_info("ORDERS")).config
    assert after == before  # not even the safe description change was applied


def test_help_lists_the_consumer_commands() -> None:
    done = _run("--help")
    assert done.returncode == 0
    for command in ("serve", "up", "consume", "dlq"):
        assert command in done.stdout


def test_consume_hands_over_to_the_consumers_cli() -> None:
    done = _run("consume", "no_such_module:billing", "--nats-url", "nats://127.0.0.1:1")
    assert done.returncode == 2
    assert "cannot load 'no_such_module:billing'" in done.stderr


def test_dlq_hands_over_to_the_consumers_cli(nats_url: str) -> None:
    done = _run("dlq", "purge", "--group", "billing", "--nats-url", nats_url)
    assert done.returncode == 0
    assert "no dead-letter stream yet" in done.stderr
