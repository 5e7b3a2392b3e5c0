"""`jetgate publish` as a real process against a real gateway and nats-server: what it
prints is what JetStream stored, refused events show their status details, exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from nats.aio.client import Client

from consumers.headers import text_headers
from gateway.server import Gateway
from jetgate.examples.orders.v1 import orders_pb2
from tests.integration.conftest import order_placed

REPO = Path(__file__).resolve().parents[2]
JETGATE = str(Path(sys.executable).parent / "jetgate")
PLACED_JSON = json_format.MessageToJson(order_placed("o-42"), indent=None)


async def _publish(address: str, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETGATE_")}
    process = await asyncio.create_subprocess_exec(
        *(JETGATE, "publish", *args, "--gateway", address),
        *("--config", str(REPO / "jetgate.toml")),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _rows(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines()]


async def test_one_event_is_stored_as_given(gateway: Gateway, nc: Client) -> None:
    code, out, err = await _publish(
        gateway.address,
        *("OrderPlaced", "--key", "o-42", "--json", PLACED_JSON),
        *("--id", "evt-1", "--header", "tenant=acme"),
    )

    assert code == 0, err
    (row,) = _rows(out)
    assert row == {
        "event_id": "evt-1",
        "stream": "ORDERS",
        "subject": "orders.OrderPlaced.o-42",
        "sequence": 1,
        "duplicate": False,
    }
    stored = await nc.jetstream().get_msg("ORDERS", row["sequence"])
    assert orders_pb2.OrderPlaced.FromString(stored.data or b"") == order_placed("o-42")
    headers = text_headers(stored.headers)
    assert headers["tenant"] == "acme"
    assert headers["ce-id"] == "evt-1"


async def test_a_refused_event_shows_its_details_and_exits_3(gateway: Gateway) -> None:
    code, out, err = await _publish(
        gateway.address, "OrderPlaced", "--key", "a.b", "--json", PLACED_JSON
    )

    assert code == 3
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith("jetgate publish: INVALID_ARGUMENT: ")
    assert '"field":"event.key"' in line


async def test_a_failed_precondition_shows_expected_and_actual(gateway: Gateway) -> None:
    args = ("OrderPlaced", "--key", "o-42", "--json", PLACED_JSON)
    assert (await _publish(gateway.address, *args, "--expect-last-key-seq", "0"))[0] == 0

    code, _, err = await _publish(gateway.address, *args, "--expect-last-key-seq", "0")

    assert code == 3
    (line,) = err.splitlines()
    assert line.startswith("jetgate publish: FAILED_PRECONDITION: ")
    assert '"actualSequence":"1"' in line


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("NoSuchEvent", "--key", "o-1", "--json", "{}"), "'NoSuchEvent' is not a registered"),
        (("OrderPlaced", "--key", "o-1", "--json", "{nope"), "--json is not JSON"),
        (("OrderPlaced", "--key", "o-1", "--json", "{}", "--header", "x"), "use NAME=VALUE"),
    ],
)
async def test_usage_errors_exit_2(gateway: Gateway, args: tuple[str, ...], says: str) -> None:
    code, out, err = await _publish(gateway.address, *args)

    assert code == 2
    assert out == ""
    (line,) = err.splitlines()
    assert says in line


async def test_unreachable_gateway_exits_1() -> None:
    code, _, err = await _publish("127.0.0.1:1", "OrderPlaced", "--key", "o", "--json", "{}")

    assert code == 1
    (line,) = err.splitlines()
    assert "UNAVAILABLE" in line


async def test_json_lines_on_stdin_go_in_batches_each_with_its_result(
    gateway: Gateway, nc: Client
) -> None:
    shipped = orders_pb2.OrderShipped(order_id="o-42", carrier="demo-post")
    lines = [
        {"key": "o-1", "payload": json.loads(PLACED_JSON)},
        {"key": "bad key", "payload": {}},
        "not json",
        # a `jetgate events --json` row publishes again as it is
        {
            "sequence": 9,
            "type": "jetgate.examples.orders.v1.OrderShipped",
            "key": "o-42",
            "id": "ship-1",
            "headers": {"tenant": "acme"},
            "payload": json_format.MessageToDict(shipped),
        },
        {"key": "o-3", "payload": {}},
    ]
    stdin = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines).encode()

    code, out, err = await _publish(gateway.address, "OrderPlaced", "--batch", "2", stdin=stdin)

    assert code == 3
    assert "2 events refused" in err
    rows = {r["line"]: r for r in _rows(out)}
    assert sorted(rows) == [1, 2, 3, 4, 5]
    assert rows[2]["error"]["code"] == "INVALID_ARGUMENT"
    violation = rows[2]["error"]["details"][0]["fieldViolations"][0]
    assert violation["field"] == "entries[1].event.key"  # the entry of its batch
    assert rows[3]["error"]["message"].startswith("line is not JSON")
    assert [rows[n]["subject"] for n in (1, 4, 5)] == [
        "orders.OrderPlaced.o-1",
        "orders.OrderShipped.o-42",
        "orders.OrderPlaced.o-3",
    ]
    stored = await nc.jetstream().get_msg("ORDERS", rows[4]["sequence"])
    assert orders_pb2.OrderShipped.FromString(stored.data or b"") == shipped
    assert text_headers(stored.headers)["ce-id"] == "ship-1"


async def test_long_input_shows_a_live_count_on_a_terminal_stderr(gateway: Gateway) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JETGATE_", "NO_COLOR"))}
    lines = "".join(
        json.dumps({"key": f"o-{n}", "payload": {"orderId": f"o-{n}"}}) + "\n" for n in range(250)
    )
    terminal, stderr = pty.openpty()
    shown = bytearray()
    os.set_blocking(terminal, False)

    def drain() -> None:  # the terminal's reader: rich redraws, the pty buffer is small
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(terminal, 65536):
                shown.extend(chunk)

    loop = asyncio.get_running_loop()
    loop.add_reader(terminal, drain)
    try:
        process = await asyncio.create_subprocess_exec(
            *(JETGATE, "publish", "OrderPlaced", "--gateway", gateway.address),
            *("--config", str(REPO / "jetgate.toml")),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
        out, _ = await asyncio.wait_for(process.communicate(lines.encode()), 60)
        drain()
    finally:
        loop.remove_reader(terminal)
        os.close(terminal)
        os.close(stderr)

    assert process.returncode == 0, shown
    assert len(_rows(out.decode())) == 250, bytes(shown)[-600:]
    assert b"250 events sent, 0 refused" in bytes(shown)
