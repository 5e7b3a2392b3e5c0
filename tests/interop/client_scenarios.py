"""What every non-Python client must be able to do, written once and run by the Go and the
Node client (tests/interop/test_go_client.py, test_node_subscribe.py): publish, decode
error details, subscribe to a declared group (ACK, NAK redelivered after its delay,
REJECT into the DLQ with its reason) and read a key's history.

The clients print what they saw as JSON lines; these checks compare it with what
JetStream stored, read with nats-py. Go prints uint64 as numbers and status codes as
`InvalidArgument`, Node as strings and `INVALID_ARGUMENT`: `code()` and `int()` even that out.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from nats.aio.client import Client as Nats

from consumers import deadletter
from consumers.deadletter import DeadLetter
from gateway.server import Gateway
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import gateway_pb2_grpc
from tests.integration.conftest import field_violations, request, rich_status
from tests.interop.clients import PLACED, Client, Line, run_json
from tests.interop.conftest import DECLARED, GROUP
from tests.support.eventually import eventually


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


async def subscribes_acks_naks_and_rejects(
    client: Client, nc: Nats, home: Path, *, nak_delay: float
) -> None:
    """Five events through the declared group: four ACKed, one NAKed once (redelivered as
    attempt 2 after `nak_delay` seconds, or 0: after the group's backoff), one REJECTed
    (then in the DLQ with the client's reason, listed by the client with Admin)."""
    prefix = f"{client.language}-s"
    ids = [f"{prefix}-{i}" for i in range(5)]
    await run_json(client.argv("publish", count=5, id_prefix=prefix, key_prefix=prefix), home)
    reason = f"{client.language} client: order cannot be billed"
    argv = client.argv(
        "subscribe",
        group=GROUP,
        max_in_flight=4,
        count=5,
        nak=ids[1],
        nak_delay_ms=round(nak_delay * 1000),
        reject=ids[3],
        reason=reason,
    )
    lines = await run_json(argv, home)

    subscribed, *settled = lines
    assert subscribed["kind"] == "subscribed"
    assert (subscribed["group"], subscribed["stream"]) == (GROUP, "ORDERS")
    assert int(subscribed["max_deliver"]) == DECLARED.max_deliver
    assert {line["status"] for line in settled} == {"APPLIED"}, settled
    by_action = {(line["event_id"], line["action"]): line for line in settled}
    assert len(by_action) == len(settled) == 6, settled  # one NAK more than events
    final = sorted(i for i, action in by_action if action != "NAK")
    assert final == ids, "each event settled for good exactly once"
    naked, redelivered = by_action[(ids[1], "NAK")], by_action[(ids[1], "ACK")]
    assert (int(naked["attempt"]), int(redelivered["attempt"])) == (1, 2)
    delay = nak_delay or DECLARED.backoff[0]
    assert redelivered["seconds_since_nak"] >= delay, "redelivered before the NAK's delay"
    assert by_action[(ids[3], "REJECT")]["attempt"] == 1
    assert all(line["type"] == PLACED for line in settled)

    dead = await eventually(lambda: _dead_letters(nc), what="the rejected event in the DLQ")
    assert [(d.event_id, d.origin_stream, d.attempts) for d in dead] == [(ids[3], "ORDERS", 1)]
    assert (dead[0].reason, dead[0].error) == ("reject", reason)
    assert dead[0].origin_sequence == int(by_action[(ids[3], "REJECT")]["sequence"])
    # The same, as the client sees it through the Admin service.
    [listed] = await run_json(client.argv("dead-letters", group=GROUP), home)
    assert (listed["event_id"], listed["group"], listed["reason"], listed["error"]) == (
        ids[3],
        GROUP,
        "reject",
        reason,
    )
    assert int(listed["origin_sequence"]) == dead[0].origin_sequence

    async def settled_for_good() -> bool:
        info = await nc.jetstream().consumer_info("ORDERS", GROUP)
        return (info.num_pending, info.num_ack_pending) == (0, 0)

    await eventually(settled_for_good, what="nothing pending or unacknowledged in the group")


async def _dead_letters(nc: Nats) -> list[DeadLetter]:
    found = [d async for d in deadletter.dead_letters(nc.jetstream(), GROUP)]
    assert found, "no dead letter yet"
    return found


async def reads_a_keys_history(client: Client, home: Path, *, per_response: int) -> None:
    """Read by key: that aggregate's events only, in stream order, with their sequences;
    `per_response` > 1: several in one response message, 0: one each."""
    key = f"{client.language}-history"
    [mine] = await run_json(client.argv("publish", count=3, key=key, id_prefix=key), home)
    await run_json(client.argv("publish", count=2, id_prefix=f"{key}-other"), home)
    argv = client.argv("read", key=key, max_events_per_response=per_response)
    lines = await run_json(argv, home)

    events = [line for line in lines if line["kind"] == "event"]
    assert [e["event_id"] for e in events] == [f"{key}-{i}" for i in range(3)]
    first, last = int(mine["first_sequence"]), int(mine["last_sequence"])
    assert [int(e["sequence"]) for e in events] == list(range(first, last + 1))
    assert {(e["subject"], e["stream"], e["type"]) for e in events} == {
        (f"orders.OrderPlaced.{key}", "ORDERS", PLACED)
    }
    assert [line["kind"] for line in lines[len(events) :]] in ([], ["caught_up"])
    if per_response > 1:
        assert max(e["in_response"] for e in events) > 1, "no response held several events"
    else:
        assert {e["in_response"] for e in events} == {1}
