"""`jetgate events` as a real process against a real nats-server, events stored by a real
gateway: decoded rows equal what was published, filters, --last, --follow, errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from nats.aio.client import Client

from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import order_placed, request
from tests.support.eventually import eventually

REPO = Path(__file__).resolve().parents[2]
JETGATE = str(Path(sys.executable).parent / "jetgate")
Stub = gateway_pb2_grpc.EventGatewayStub
SHIPPED = orders_pb2.OrderShipped(order_id="o-42", carrier="demo-post", tracking_number="t-1")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("JETGATE_", "NO_COLOR"))}


async def _events(nats_url: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *(JETGATE, "events", *args, "--nats-url", nats_url),
        *("--config", str(REPO / "jetgate.toml")),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _rows(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines()]


async def _publish_three(stub: Stub) -> list[gateway_pb2.PublishResponse]:
    return [
        await stub.Publish(request("o-42", headers={"tenant": "acme"})),
        await stub.Publish(request("o-7")),
        await stub.Publish(request("o-42", message=SHIPPED)),
    ]


async def test_events_of_a_key_round_trip_as_json_lines(stub: Stub, nats_url: str) -> None:
    placed, _, shipped = await _publish_three(stub)

    code, out, err = await _events(nats_url, "ORDERS", "--key", "o-42", "--json")

    assert code == 0, err
    first, second = _rows(out)
    assert first["sequence"] == placed.sequence
    assert first["id"] == placed.event_id
    assert first["type"] == "jetgate.examples.orders.v1.OrderPlaced"
    assert (first["key"], first["subject"]) == ("o-42", "orders.OrderPlaced.o-42")
    assert first["headers"] == {"tenant": "acme"}
    assert json_format.ParseDict(first["payload"], orders_pb2.OrderPlaced()) == order_placed("o-42")
    assert second["sequence"] == shipped.sequence
    assert json_format.ParseDict(second["payload"], orders_pb2.OrderShipped()) == SHIPPED


async def test_last_n_of_a_subject_filter(stub: Stub, nats_url: str) -> None:
    await _publish_three(stub)
    last = await stub.Publish(request("o-8"))

    code, out, err = await _events(
        nats_url, "ORDERS", "--subject", "orders.OrderPlaced.>", "--last", "2", "--json"
    )

    assert code == 0, err
    assert [r["key"] for r in _rows(out)] == ["o-7", "o-8"]
    code, out, err = await _events(nats_url, "ORDERS", "--last", "1", "--json")
    assert [r["sequence"] for r in _rows(out)] == [last.sequence]


async def test_from_a_sequence_in_plain_text(stub: Stub, nats_url: str) -> None:
    replies = await _publish_three(stub)

    code, out, err = await _events(nats_url, "ORDERS", "--from", str(replies[2].sequence))

    assert code == 0, err
    (line,) = out.splitlines()
    assert line.startswith(f"#{replies[2].sequence}  ")
    assert "orders.OrderShipped.o-42  OrderShipped  id=" in line
    assert line.endswith(json_format.MessageToJson(SHIPPED, indent=None).replace(" ", ""))
    assert "\x1b[" not in out  # no colour off a terminal


async def test_follow_sees_an_event_published_after_it_started(
    stub: Stub, nats_url: str, tmp_path: Path
) -> None:
    before = await stub.Publish(request("o-42"))
    output = tmp_path / "events.jsonl"
    with output.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            *(JETGATE, "events", "ORDERS", "--key", "o-42", "--follow", "--json"),
            *("--nats-url", nats_url, "--config", str(REPO / "jetgate.toml")),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=sink,
            stderr=asyncio.subprocess.PIPE,
            env=_env(),
        )
    try:

        def sequences() -> list[int]:
            seen = [r["sequence"] for r in _rows(output.read_text())]
            assert seen, "nothing printed yet"
            return seen

        assert await eventually(sequences) == [before.sequence]
        after = await stub.Publish(request("o-42", message=SHIPPED))
        await stub.Publish(request("o-7"))  # another key: not shown

        async def both() -> bool:
            return sequences() == [before.sequence, after.sequence]

        await eventually(both)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err


async def test_an_undecodable_payload_is_shown_with_its_error(
    stub: Stub, nc: Client, nats_url: str
) -> None:
    await stub.Publish(request("o-1"))  # the gateway creates the stream
    await nc.jetstream().publish("orders.OrderPlaced.o-9", b"\xff\xff")

    code, out, err = await _events(nats_url, "ORDERS", "--key", "o-9", "--json")

    assert code == 0, err
    (row,) = _rows(out)
    assert row["payload"] is None
    assert row["error"] == (
        "payload of 2 bytes is not a valid jetgate.examples.orders.v1.OrderPlaced"
    )


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (("NOPE",), 1, "no stream 'NOPE'"),
        (("ORDERS", "--from", "yesterday"), 2, "--from 'yesterday': use a stream sequence"),
        (("ORDERS", "--key", "a.b"), 2, "--key: key contains '.'"),
    ],
)
async def test_errors_are_one_line_with_their_exit_code(
    stub: Stub, nats_url: str, args: tuple[str, ...], code: int, says: str
) -> None:
    await stub.Publish(request("o-1"))

    exit_code, out, err = await _events(nats_url, *args)

    assert exit_code == code
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith("jetgate events: ")
    assert says in line
