"""`jetgate decode` runs once per message under natscli's `--translate`: it imports what it
needs, not the whole gateway (it cost ~0.8 s of CPU per call, mostly imports), while
`jetgate --help` and `jetgate decode --help` stay complete."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from gateway import cli as gateway_cli
from jetgate.examples.orders.v1 import orders_pb2

REPO = Path(__file__).resolve().parents[2]
JETGATE = str(Path(sys.executable).parent / "jetgate")
# What only the other commands need: the gRPC server, telemetry, the consumers, the gRPC
# client and tables of `publish`/`streams`, the NATS reader of `events`.
NOT_FOR_DECODE = (
    "gateway.server",
    "gateway.servicer",
    "gateway.embedded",
    "gateway.workers",
    "gateway.banner",
    "observability",
    "opentelemetry.sdk",
    "consumers.cli",
    "consumers.worker",
    "gateway.publish_cli",
    "gateway.events",
    "gateway.status_cli",
    "rich",
)
PROBE = """
import sys
from gateway import cli
try:
    cli.main(sys.argv[1:])
finally:
    loaded = [m for m in {modules!r} if m in sys.modules]
    print("loaded:", ",".join(loaded), file=sys.stderr)
"""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("JETGATE_")}


def test_decode_imports_none_of_the_other_commands_modules() -> None:
    payload = orders_pb2.OrderPlaced(order_id="o-42").SerializeToString()
    done = subprocess.run(
        [
            *(sys.executable, "-c", PROBE.format(modules=NOT_FOR_DECODE)),
            *("decode", "--subject", "orders.OrderPlaced.o-42", "--config", "jetgate.toml"),
        ],
        input=payload,
        capture_output=True,
        cwd=REPO,
        env=_env(),
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert b'"orderId": "o-42"' in done.stdout
    assert done.stderr.decode().splitlines()[-1] == "loaded: "


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    # argparse has no public way to reach a subparser.
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    found: argparse.ArgumentParser = commands.choices[name]
    return found


def test_decode_help_is_the_same_on_the_light_path() -> None:
    done = subprocess.run(
        [JETGATE, "decode", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**_env(), "COLUMNS": "100"},
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    os.environ["COLUMNS"] = "100"  # argparse wraps to it, as in the process
    try:
        expected = _subcommand(gateway_cli._parser(), "decode").format_help()
    finally:
        del os.environ["COLUMNS"]
    assert done.stdout == expected
    assert "--translate 'jetgate decode --subject {{Subject}}'" in done.stdout


def test_jetgate_help_lists_every_command() -> None:
    done = subprocess.run(
        [JETGATE, "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_env(),
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    commands = ("serve", "up", "consume", "dlq", "decode", "events", "publish", "streams")
    for command in (*commands, "groups", "init"):
        assert f"    {command} " in done.stdout, command
