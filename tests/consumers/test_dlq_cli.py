"""`python -m consumers dlq list|redrive|purge` against dead letters real workers stored.

The workers run in-process (`consumers.Worker`); the CLI runs as its own process.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from consumers import ConsumerGroup, Delivery, Reject, Worker
from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2
from tests.consumers.conftest import STREAM, group, run_until, store

REPO = Path(__file__).resolve().parents[2]
ORDER_PLACED = orders_pb2.OrderPlaced.DESCRIPTOR.full_name


async def dlq(nats_url: str, *args: str) -> tuple[int, str, str]:
    """Run `python -m consumers dlq ARGS`; its exit code, stdout and stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETGATE_")}
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-W", "error", "-m", "consumers", "dlq", *args),
        *("--nats-url", nats_url),
        cwd=REPO,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def listed(nats_url: str, name: str) -> list[dict[str, Any]]:
    code, out, err = await dlq(nats_url, "list", "--group", name, "--json")
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def picky(name: str, handled: list[Delivery] | None = None, **settings: object) -> ConsumerGroup:
    """A group that rejects keys `bad-*`, fails keys `boom-*` every time, takes the rest."""
    result = group(name, **settings)

    @result.handler(orders_pb2.OrderPlaced)
    async def handle(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        if delivery.key.startswith("bad-"):
            raise Reject(f"order {event.order_id} is refused")
        if delivery.key.startswith("boom-"):
            raise RuntimeError(f"order {event.order_id} broke")
        if handled is not None:
            handled.append(delivery)

    return result


def recording(name: str, handled: list[Delivery]) -> ConsumerGroup:
    """A group that takes every event (the fixed version of `picky`)."""
    result = group(name)

    @result.handler(orders_pb2.OrderPlaced)
    async def handle(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        handled.append(delivery)

    return result


async def test_list_shows_dead_letters_and_redrive_hands_them_back_to_their_group(
    nats_url: str, nc: Client, js: JetStreamContext
) -> None:
    keys = ["good-1", "bad-1", "boom-1", "good-2", "bad-2"]
    ids = {key: wire.new_event_id() for key in keys}
    sequences = {key: await store(js, key, event_id=ids[key]) for key in keys}
    dead_keys = {"bad-1", "bad-2", "boom-1"}
    billing_took: list[Delivery] = []
    audit_took: list[Delivery] = []
    billing = Worker(picky("billing", billing_took, max_deliver=2), nc)
    audit = Worker(recording("audit", audit_took), nc)  # another group on the same events
    await asyncio.gather(
        run_until(billing, lambda: billing.stats.processed + billing.stats.dead_lettered == 5),
        run_until(audit, lambda: audit.stats.processed == 5),
    )
    assert (billing.stats.processed, billing.stats.dead_lettered) == (2, 3)

    rows = await listed(nats_url, "billing")
    assert {row["event_id"] for row in rows} == {ids[key] for key in dead_keys}
    by_key = {row["subject"].rsplit(".", 1)[1]: row for row in rows}
    for key in dead_keys:
        row = by_key[key]
        assert row["subject"] == wire.subject("orders", ORDER_PLACED, key)
        assert row["origin"] == f"{STREAM}/{sequences[key]}"
        assert row["type"] == ORDER_PLACED
    for key in ("bad-1", "bad-2"):
        assert (by_key[key]["reason"], by_key[key]["attempts"]) == ("reject", 1)
        assert by_key[key]["error"] == f"order {key} is refused"
    assert (by_key["boom-1"]["reason"], by_key["boom-1"]["attempts"]) == ("exhausted", 2)
    assert by_key["boom-1"]["error"] == "RuntimeError: order boom-1 broke"
    assert await listed(nats_url, "audit") == []

    code, out, err = await dlq(nats_url, "redrive", "--group", "billing")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[-1] == "redrove 3 dead letters of group billing"
    assert sorted(lines[:-1]) == sorted(
        f"redrove {ids[key]} to {wire.subject('orders', ORDER_PLACED, key)}" for key in dead_keys
    )
    assert await listed(nats_url, "billing") == []

    # The fixed handler gets them on their origin subjects, same event ids; `audit`, which
    # handled them already, acknowledges the redriven copies without handling them again.
    fixed_took: list[Delivery] = []
    fixed = Worker(recording("billing", fixed_took), nc)
    audit_again = Worker(recording("audit", audit_took), nc)
    await asyncio.gather(
        run_until(fixed, lambda: len(fixed_took) == 3),
        run_until(audit_again, lambda: audit_again.stats.skipped == 3),
    )
    assert sorted((d.key, d.event_id, d.subject) for d in fixed_took) == sorted(
        (key, ids[key], wire.subject("orders", ORDER_PLACED, key)) for key in dead_keys
    )
    assert all(d.attempt == 1 and d.sequence > sequences[d.key] for d in fixed_took)
    assert all(d.headers == {"tenant": "t-1"} for d in fixed_took)  # user headers kept
    assert fixed.stats.dead_lettered == 0
    assert sorted(d.key for d in audit_took) == sorted(keys)  # each once, originals only
    assert await listed(nats_url, "billing") == []


async def test_purge_empties_one_groups_dead_letters_only(
    nats_url: str, nc: Client, js: JetStreamContext
) -> None:
    keys = ["bad-1", "good-1", "bad-2"]
    ids = {key: wire.new_event_id() for key in keys}
    for key in keys:
        await store(js, key, event_id=ids[key])
    billing = Worker(picky("billing"), nc)
    audit = Worker(picky("audit"), nc)
    await asyncio.gather(
        run_until(billing, lambda: billing.stats.dead_lettered == 2),
        run_until(audit, lambda: audit.stats.dead_lettered == 2),
    )
    dead_ids = {ids["bad-1"], ids["bad-2"]}
    assert {row["event_id"] for row in await listed(nats_url, "billing")} == dead_ids

    code, out, err = await dlq(nats_url, "purge", "--group", "billing")
    assert (code, out) == (0, "purged 2 dead letters of group billing\n"), err
    assert await listed(nats_url, "billing") == []
    kept = await listed(nats_url, "audit")
    assert {row["event_id"] for row in kept} == dead_ids
    assert {row["reason"] for row in kept} == {"reject"}

    code, out, err = await dlq(nats_url, "purge", "--group", "billing")
    assert (code, out) == (0, "purged 0 dead letters of group billing\n"), err
    assert len(await listed(nats_url, "audit")) == 2


async def test_list_before_any_worker_ran_says_there_is_no_dead_letter_stream(
    nats_url: str,
) -> None:
    code, out, err = await dlq(nats_url, "list", "--group", "billing")
    assert (code, out) == (0, "")
    assert "no dead-letter stream yet" in err
