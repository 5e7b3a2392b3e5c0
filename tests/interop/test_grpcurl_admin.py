"""grpcurl calls the Admin service with nothing but server reflection: list and describe
it, ListStreams, and a refusal's details."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nats.aio.client import Client

from gateway.server import Gateway
from jetgate.v1 import gateway_pb2_grpc
from tests.integration.conftest import request
from tests.interop.conftest import peer, run_peer

pytestmark = pytest.mark.interop


async def grpcurl(
    gateway: Gateway, tmp_path: Path, *args: str, data: str | None = None
) -> tuple[int, str, str]:
    """Run `grpcurl -plaintext [-d DATA] ADDRESS ARGS...`; exit code, stdout, stderr."""
    assert gateway.address.startswith("127.0.0.1:")
    flags = [] if data is None else ["-d", data]
    done = await run_peer(
        [str(peer("grpcurl")), "-plaintext", *flags, gateway.address, *args],
        home=tmp_path / "home",
    )
    return done.returncode, done.stdout, done.stderr


async def test_list_streams_through_reflection(
    gateway: Gateway, stub: gateway_pb2_grpc.EventGatewayAsyncStub, tmp_path: Path, nc: Client
) -> None:
    for key in ("o-1", "o-2"):
        await stub.Publish(request(key), timeout=20)

    code, out, err = await grpcurl(gateway, tmp_path, "list")
    assert code == 0, err
    assert "jetgate.v1.Admin" in out.split()
    code, out, err = await grpcurl(gateway, tmp_path, "describe", "jetgate.v1.Admin")
    assert code == 0, err
    assert "rpc ListStreams" in out

    code, out, err = await grpcurl(gateway, tmp_path, "jetgate.v1.Admin/ListStreams", data="{}")

    assert code == 0, err
    [orders] = json.loads(out)["streams"]
    # grpcurl's JSON: proto field names, 64-bit integers as strings, times RFC 3339.
    assert (orders["name"], orders["messages"], orders["last_sequence"]) == ("ORDERS", "2", "2")
    assert (orders["subjects_count"], orders["storage"]) == ("2", "file")
    assert "jetgate.examples.orders.v1.OrderPlaced" in orders["event_types"]
    assert orders["last_time"].endswith("Z")


async def test_a_refusal_shows_its_details(gateway: Gateway, tmp_path: Path) -> None:
    asked = '{"stream": "NOPE"}'
    code, _, err = await grpcurl(gateway, tmp_path, "jetgate.v1.Admin/GetStream", data=asked)
    assert code != 0
    assert "NotFound" in err
    assert "google.rpc.ResourceInfo" in err
