"""Admin ListDeadLetters/RedriveDeadLetters/PurgeDeadLetters against dead letters real
workers stored: the same answers and effects as `jetgate dlq list|redrive|purge` (one
implementation, consumers.deadletter), compared with the CLI run as its own process."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import grpc
import grpc.aio
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from consumers import Worker
from gateway.admin_dead_letters import DEFAULT_LIMIT, MAX_LIMIT, effective_limit
from jetgate import wire
from jetgate.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2_grpc
from tests.consumers.conftest import run_until
from tests.consumers.test_dlq_cli import listed, picky
from tests.consumers.test_oversize_dead_letters import RAW_SIZE
from tests.integration.admin_support import admin, resource, violations
from tests.integration.conftest import request

__all__ = ["admin"]  # the fixture

ORDER_PLACED = "jetgate.examples.orders.v1.OrderPlaced"


async def publish(stub: gateway_pb2_grpc.EventGatewayAsyncStub, keys: list[str]) -> dict[str, str]:
    """Publish an OrderPlaced per key through the gateway; their event ids by key."""
    return {key: (await stub.Publish(request(key), timeout=20)).event_id for key in keys}


async def dead_letters(
    admin: admin_pb2_grpc.AdminAsyncStub, group: str, limit: int = 0
) -> admin_pb2.ListDeadLettersResponse:
    asked = admin_pb2.ListDeadLettersRequest(group=group, limit=limit)
    return await admin.ListDeadLetters(asked, timeout=20)


def as_cli_row(dead: admin_pb2.DeadLetter) -> dict[str, object]:
    """A listed dead letter as `jetgate dlq list --json` prints it."""
    return {
        "sequence": dead.sequence,
        "event_id": dead.event_id,
        "type": dead.event_type,
        "origin": f"{dead.origin_stream}/{dead.origin_sequence}",
        "subject": dead.origin_subject,
        "reason": dead.reason,
        "attempts": dead.attempts,
        "error": dead.error,
        "truncated": dead.truncated,
    }


async def test_list_and_redrive_answer_as_jetgate_dlq_does(
    admin: admin_pb2_grpc.AdminAsyncStub,
    stub: gateway_pb2_grpc.EventGatewayAsyncStub,
    nc: Client,
    nats_url: str,
) -> None:
    ids = await publish(stub, ["good-1", "bad-1", "boom-1", "good-2", "bad-2"])
    billing = Worker(picky("billing", max_deliver=2), nc)
    await run_until(billing, lambda: billing.stats.processed + billing.stats.dead_lettered == 5)

    reply = await dead_letters(admin, "billing")

    assert reply.total == 3
    assert [as_cli_row(d) for d in reply.dead_letters] == await listed(nats_url, "billing")
    by_key = {d.origin_subject.rsplit(".", 1)[1]: d for d in reply.dead_letters}
    assert {k: d.event_id for k, d in by_key.items()} == {
        k: ids[k] for k in ("bad-1", "boom-1", "bad-2")
    }
    boom = by_key["boom-1"]
    assert (boom.group, boom.reason, boom.attempts) == ("billing", "exhausted", 2)
    assert boom.error == "RuntimeError: order boom-1 broke"
    assert (boom.origin_stream, boom.event_type, boom.truncated) == ("ORDERS", ORDER_PLACED, False)
    assert boom.size > 0
    assert boom.HasField("time")
    assert [d.sequence for d in reply.dead_letters] == sorted(
        d.sequence for d in reply.dead_letters
    )

    first_two = await dead_letters(admin, "billing", limit=2)
    assert (list(first_two.dead_letters), first_two.total) == (list(reply.dead_letters[:2]), 3)

    stored = (await nc.jetstream().stream_info("ORDERS")).state.messages
    redriven = await admin.RedriveDeadLetters(
        admin_pb2.RedriveDeadLettersRequest(group="billing"), timeout=20
    )
    assert (redriven.redriven, list(redriven.refused)) == (3, [])
    assert (await nc.jetstream().stream_info("ORDERS")).state.messages == stored + 3
    assert await listed(nats_url, "billing") == []
    assert (await dead_letters(admin, "billing")).total == 0


async def test_purge_empties_one_groups_dead_letters_and_a_deleted_groups_stay_reachable(
    admin: admin_pb2_grpc.AdminAsyncStub,
    stub: gateway_pb2_grpc.EventGatewayAsyncStub,
    nc: Client,
    nats_url: str,
) -> None:
    await publish(stub, ["bad-1", "good-1", "bad-2"])
    billing, archive = Worker(picky("billing"), nc), Worker(picky("archive"), nc)
    await asyncio.gather(
        run_until(billing, lambda: billing.stats.dead_lettered == 2),
        run_until(archive, lambda: archive.stats.dead_lettered == 2),
    )
    purge = admin_pb2.PurgeDeadLettersRequest(group="billing")

    assert (await admin.PurgeDeadLetters(purge, timeout=20)).purged == 2
    assert await listed(nats_url, "billing") == []
    assert len(await listed(nats_url, "archive")) == 2
    assert (await admin.PurgeDeadLetters(purge, timeout=20)).purged == 0

    # The group is gone, its dead letters are not: still listed, and purgeable.
    await nc.jetstream().delete_consumer("ORDERS", "archive")
    assert (await dead_letters(admin, "archive")).total == 2
    purged = await admin.PurgeDeadLetters(admin_pb2.PurgeDeadLettersRequest(group="archive"))
    assert purged.purged == 2
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await dead_letters(admin, "archive")
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_redrive_reports_what_it_keeps_and_why(
    admin: admin_pb2_grpc.AdminAsyncStub,
    stub: gateway_pb2_grpc.EventGatewayAsyncStub,
    nc: Client,
) -> None:
    """A dead letter near max_payload cannot be republished with its redrive headers."""
    big = await nc.jetstream().publish("orders.OrderPlaced.big-raw", b"\x01" * RAW_SIZE)
    await publish(stub, ["bad-1"])
    billing = Worker(picky("billing"), nc)
    await run_until(billing, lambda: billing.stats.dead_lettered == 2)
    [kept, _] = (await dead_letters(admin, "billing")).dead_letters
    assert (kept.origin_sequence, kept.truncated, kept.size) == (big.seq, True, RAW_SIZE)

    reply = await admin.RedriveDeadLetters(
        admin_pb2.RedriveDeadLettersRequest(group="billing"), timeout=20
    )

    assert reply.redriven == 1
    [refusal] = reply.refused
    assert refusal.sequence == kept.sequence
    assert "max_payload" in refusal.reason
    assert [d.sequence for d in (await dead_letters(admin, "billing")).dead_letters] == [
        kept.sequence
    ]


async def test_a_known_group_without_a_dead_letter_stream_has_none(
    admin: admin_pb2_grpc.AdminAsyncStub, nc: Client
) -> None:
    js = nc.jetstream()
    await js.add_consumer("ORDERS", picky("billing").consumer_config())
    with pytest.raises(NotFoundError):
        await js.stream_info(wire.DEAD_LETTER_STREAM)

    assert await dead_letters(admin, "billing") == admin_pb2.ListDeadLettersResponse()
    redrive = admin_pb2.RedriveDeadLettersRequest(group="billing")
    assert (await admin.RedriveDeadLetters(redrive, timeout=20)).redriven == 0
    purge = admin_pb2.PurgeDeadLettersRequest(group="billing")
    assert (await admin.PurgeDeadLetters(purge, timeout=20)).purged == 0

    calls: list[Awaitable[object]] = [
        admin.ListDeadLetters(admin_pb2.ListDeadLettersRequest(group="ghost"), timeout=20),
        admin.RedriveDeadLetters(admin_pb2.RedriveDeadLettersRequest(group="ghost"), timeout=20),
        admin.PurgeDeadLetters(admin_pb2.PurgeDeadLettersRequest(group="ghost"), timeout=20),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await call
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        assert resource(unknown.value).resource_name == "ghost"
    for name in ("", "a.b", "x" * 300):
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await dead_letters(admin, name)
        assert "group" in violations(bad.value)


def test_the_limit_defaults_to_100_and_is_capped_at_1000() -> None:
    assert (DEFAULT_LIMIT, MAX_LIMIT) == (100, 1000)
    assert [effective_limit(n) for n in (0, 1, 999, 1000, 1001, 2**32 - 1)] == [
        100,
        1,
        999,
        1000,
        1000,
        1000,
    ]
