"""The Node recipe of docs/clients.md against a real gateway: @grpc/grpc-js with
@grpc/proto-loader reading proto/ (installed by `make node-deps` from the committed lock)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from nats.aio.client import Client

from gateway.server import Gateway
from jetgate.examples.orders.v1 import orders_pb2
from tests.interop.conftest import run_peer

pytestmark = pytest.mark.interop

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "tests" / "interop" / "node"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found on PATH", pytrace=False)
    if not (CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail(f"{CLIENT}/node_modules missing: run `make node-deps`", pytrace=False)
    return node


async def test_node_client_publishes_and_a_retry_is_a_duplicate(
    gateway: Gateway, tmp_path: Path, nc: Client
) -> None:
    argv = [_node(), str(CLIENT / "publish.js"), str(REPO / "proto"), gateway.address, "n-1"]
    replies = []
    for _ in range(2):
        done = await run_peer(argv, home=tmp_path / "home")
        assert done.returncode == 0, done.stderr
        replies.append(json.loads(done.stdout))
    first, retry = replies
    assert first["subject"] == "orders.OrderPlaced.o-43"
    assert first["event_id"] == "n-1"
    assert "duplicate" not in first  # proto-loader omits false defaults
    assert retry["duplicate"] is True
    assert retry["sequence"] == first["sequence"]
    stored = await nc.jetstream().get_msg("ORDERS", int(first["sequence"]))
    placed = orders_pb2.OrderPlaced.FromString(stored.data)
    assert (placed.order_id, placed.customer_id) == ("o-43", "c-7")
