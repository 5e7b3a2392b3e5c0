"""`jetgate streams` and `jetgate groups` as real processes against a real nats-server with
a stream the gateway made: the figures JetStream reports, as JSON lines and plain columns."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig

from jetgate import wire
from jetgate.v1 import gateway_pb2_grpc
from tests.integration.conftest import request

REPO = Path(__file__).resolve().parents[2]
JETGATE = str(Path(sys.executable).parent / "jetgate")
Stub = gateway_pb2_grpc.EventGatewayStub


async def _run(nats_url: str, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETGATE_")}
    process = await asyncio.create_subprocess_exec(
        *(JETGATE, *args, "--nats-url", nats_url, "--config", str(REPO / "jetgate.toml")),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _rows(output: str, key: str) -> dict[str, dict[str, Any]]:
    return {row[key]: row for row in map(json.loads, output.splitlines())}


async def _two_events_a_group_and_a_dead_letter(stub: Stub, nc: Client) -> None:
    await stub.Publish(request("o-1"))
    await stub.Publish(request("o-2"))
    js = nc.jetstream()
    await js.add_consumer(
        "ORDERS", ConsumerConfig(durable_name="billing", ack_policy=AckPolicy.EXPLICIT)
    )
    await js.add_stream(name=wire.DEAD_LETTER_STREAM, subjects=[f"{wire.DEAD_LETTER_PREFIX}.>"])
    await js.publish(wire.dead_letter_subject("billing", "orders.OrderPlaced.o-0"), b"")


async def test_streams_as_json_lines(stub: Stub, nc: Client, nats_url: str) -> None:
    await _two_events_a_group_and_a_dead_letter(stub, nc)

    code, out, err = await _run(nats_url, "streams", "--json")

    assert code == 0, err
    orders = _rows(out, "stream")["ORDERS"]
    assert orders["messages"] == 2
    assert orders["bytes"] > 0
    assert orders["replicas"] == 1
    assert "jetgate.examples.orders.v1.OrderPlaced" in orders["event_types"]
    assert wire.parse_time(orders["first"]) <= wire.parse_time(orders["last"])


async def test_groups_as_json_lines_and_plain_columns(
    stub: Stub, nc: Client, nats_url: str
) -> None:
    await _two_events_a_group_and_a_dead_letter(stub, nc)

    code, out, err = await _run(nats_url, "groups", "--json")

    assert code == 0, err
    billing = _rows(out, "group")["billing"]
    assert billing == {
        "group": "billing",
        "stream": "ORDERS",
        "pending": 2,
        "ack_pending": 0,
        "redelivered": 0,
        "dead_letters": 1,
        "pulls_waiting": 0,
    }
    code, out, err = await _run(nats_url, "groups", "--stream", "ORDERS")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header == (
        "GROUP    STREAM  PENDING  ACK PENDING  REDELIVERED  DEAD LETTERS  PULLS WAITING"
    )
    assert [row.split() for row in rows] == [
        ["audit", "ORDERS", "2", "0", "0", "0", "0"],  # declared in jetgate.toml
        ["billing", "ORDERS", "2", "0", "0", "1", "0"],
    ]
    assert "\x1b[" not in out  # no colour off a terminal


async def test_groups_of_a_missing_stream_exit_1(stub: Stub, nats_url: str) -> None:
    await stub.Publish(request("o-1"))

    code, out, err = await _run(nats_url, "groups", "--stream", "NOPE")

    assert code == 1
    assert out == ""
    assert err == "jetgate groups: no stream 'NOPE'\n"
