"""`jetgate decode` as the real `nats` CLI's `--translate` command (natscli v0.5.0).

natscli runs the command once per message with the payload on stdin and `{{Subject}}`
filled in; what it prints (stdout and stderr together) replaces the raw bytes. The round
trip: the JSON that comes out parses back into the message that was published.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from google.protobuf import json_format
from nats.aio.client import Client

from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import gateway_pb2_grpc
from tests.integration.conftest import order_placed, request
from tests.interop.conftest import peer, run_peer

pytestmark = pytest.mark.interop

REPO = Path(__file__).resolve().parents[2]
JETGATE = Path(sys.executable).parent / "jetgate"
TRANSLATE = f"{JETGATE} decode --subject {{{{Subject}}}} --config {REPO / 'jetgate.toml'} --compact"


async def _nats(nats_url: str, home: Path, *args: str) -> str:
    argv = [str(peer("nats")), *args, "--no-context", "--server", nats_url]
    done = await run_peer(argv, home=home)
    assert done.returncode == 0, f"{argv} exited {done.returncode}: {done.stderr}"
    return done.stdout


def _json_lines(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


async def test_stream_get_translates_the_payload_to_json(
    stub: gateway_pb2_grpc.EventGatewayStub, nats_url: str, tmp_path: Path
) -> None:
    await stub.Publish(request("o-42"))

    output = await _nats(
        nats_url,
        tmp_path,
        *("stream", "get", "ORDERS", "--last-for", "orders.OrderPlaced.o-42"),
        f"--translate={TRANSLATE}",
    )

    (decoded,) = _json_lines(output)
    assert json_format.ParseDict(decoded, orders_pb2.OrderPlaced()) == order_placed("o-42")


async def test_sub_translates_each_type_by_its_subject(
    stub: gateway_pb2_grpc.EventGatewayStub, nats_url: str, tmp_path: Path
) -> None:
    shipped = orders_pb2.OrderShipped(order_id="o-7", carrier="demo-post", tracking_number="t-1")
    await stub.Publish(request("o-7"))
    await stub.Publish(request("o-7", message=shipped))

    # `nats stream view` pages interactively (it needs a terminal); `nats sub --all` reads
    # the stream the same way, through the same translation.
    output = await _nats(
        nats_url,
        tmp_path,
        *("sub", "orders.>", "--all", "--count", "2"),
        f"--translate={TRANSLATE}",
    )

    placed, shipped_json = _json_lines(output)
    assert json_format.ParseDict(placed, orders_pb2.OrderPlaced()) == order_placed("o-7")
    assert json_format.ParseDict(shipped_json, orders_pb2.OrderShipped()) == shipped


async def test_undecodable_payload_shows_one_line_error_with_its_size(
    gateway: object, nc: Client, nats_url: str, tmp_path: Path
) -> None:
    # Not through the gateway (it would refuse it): raw bytes straight into the stream.
    await nc.jetstream().publish("orders.OrderPlaced.o-9", b"\xff\xff\xff")

    output = await _nats(
        nats_url,
        tmp_path,
        *("stream", "get", "ORDERS", "--last-for", "orders.OrderPlaced.o-9"),
        f"--translate={TRANSLATE}",
    )

    assert (
        "jetgate decode: payload of 3 bytes is not a valid "
        "jetgate.examples.orders.v1.OrderPlaced" in output
    ), output
    assert "exit status 3" in output, output
    assert "Traceback" not in output
