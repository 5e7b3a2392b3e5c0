"""What every non-Python client must be able to do, written once and run by the Go and the
Node client (tests/interop/test_go_client.py, test_node_subscribe.py): publish, decode
error details, subscribe to a declared group (ACK, NAK redelivered after its delay,
REJECT into the DLQ with its reason) and read a key's history.

The clients print what they saw as JSON lines; these checks compare it with what
JetStream stored, read with nats-py. Go prints uint64 as numbers and status codes as
`InvalidArgument`, Node as strings and `INVALID_ARGUMENT`: `code()` and `int()` even that out.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from nats.aio.client import Client as Nats

from gateway.config import GatewayConfig
from gateway.groups import GroupConfig
from gateway.server import Gateway
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import gateway_pb2_grpc
from tests.integration.conftest import field_violations, request, rich_status, serving
from tests.interop.clients import Client, Line, run_json

GROUP = "interop"
# The group open to Subscribe in these tests: every OrderPlaced, a one-second backoff.
DECLARED = GroupConfig(
    name=GROUP,
    stream="ORDERS",
    filter_subjects=("orders.OrderPlaced.>",),
    max_deliver=3,
    backoff=(1.0,),
    ack_wait=30.0,
)


@pytest.fixture
async def group_gateway(gateway_config: GatewayConfig) -> AsyncIterator[Gateway]:
    """The demo gateway with the `interop` group declared."""
    config = dataclasses.replace(gateway_config, groups=(DECLARED,))
    async with serving(config) as server:
        yield server


def code(line: Line) -> str:
    """The status code a client printed, as grpc.StatusCode names it."""
    name = str(line["code"])
    if name.isupper():
        return name
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()


async def publishes(client: Client, nc: Nats, home: Path) -> None:
    """Three events with PublishBatch; the same call again is three duplicates."""
    argv = client.argv("publish", count=3, id_prefix=f"{client.language}-p", key_prefix="pk")
    [first] = await run_json(argv, home)
    [again] = await run_json(argv, home)
    assert (first["published"], first["duplicates"], first["stream"]) == (3, 0, "ORDERS")
    assert again == {**first, "duplicates": 3}  # the original sequences
    sequences = range(int(first["first_sequence"]), int(first["last_sequence"]) + 1)
    js = nc.jetstream()
    stored = [await js.get_msg("ORDERS", sequence) for sequence in sequences]
    ids = [(m.headers or {}).get("Nats-Msg-Id") for m in stored]
    assert ids == [f"{client.language}-p-{i}" for i in range(3)]
    orders = [orders_pb2.OrderPlaced.FromString(m.data or b"").order_id for m in stored]
    assert orders == ["pk-0", "pk-1", "pk-2"]
    assert [m.subject for m in stored] == [f"orders.OrderPlaced.pk-{i}" for i in range(3)]


async def decodes_bad_request(client: Client, gateway: Gateway, home: Path) -> None:
    """The client reads the same field violations a Python client gets for its request."""
    [report] = await run_json(client.argv("bad-request"), home)
    assert code(report) == grpc.StatusCode.INVALID_ARGUMENT.name
    bad = request("bad key", event_id=f"{client.language}-bad", headers={"Nats-Msg-Id": "forged"})
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway_pb2_grpc.EventGatewayStub(channel).Publish(bad)
    expected = field_violations(rich_status(caught.value))
    assert len(expected) == 2, expected  # the key and the header, both named
    assert {v["field"]: v["description"] for v in report["violations"]} == expected


async def decodes_sequence_conflict(client: Client, home: Path) -> None:
    """A stale expected_last_key_sequence: FAILED_PRECONDITION with the SequenceConflict;
    the actual sequence from it makes the append succeed."""
    key = f"{client.language}-agg"
    published = await run_json(client.argv("publish", count=2, key=key, id_prefix=key), home)
    last = int(published[0]["last_sequence"])
    stale = int(published[0]["first_sequence"])
    argv = client.argv("conflict", key=key, id=f"{key}-next", expected=stale)
    [report] = await run_json(argv, home)
    assert code(report) == grpc.StatusCode.FAILED_PRECONDITION.name
    conflict = report["conflict"]
    assert conflict["condition"] == "expected_last_key_sequence"
    assert (int(conflict["expected_sequence"]), int(conflict["actual_sequence"])) == (stale, last)
    assert conflict["subject"].endswith(f".*.{key}")
    argv = client.argv("conflict", key=key, id=f"{key}-next", expected=last)
    assert [code(line) for line in await run_json(argv, home)] == ["OK"]
