"""Counting and purging a group's dead letters when they span more subjects than one
stream-info answer lists (nats-server stops at 100,000 subjects per answer)."""

from __future__ import annotations

from nats.aio.client import Client

from consumers import deadletter
from jetgate import wire
from tests.support.eventually import eventually

# One dead letter per key, as after a bad deploy: a subject each, past the server's page.
MANY = 100_005


async def test_count_and_purge_see_every_dead_letter_past_100k_subjects(nc: Client) -> None:
    js = nc.jetstream()
    await deadletter.ensure_stream(js, replicas=1)
    for i in range(MANY):
        await nc.publish(wire.dead_letter_subject("billing", f"orders.OrderPlaced.o-{i}"), b"x")
        if i % 5_000 == 0:
            await nc.flush()
    for i in range(3):  # another group's: not counted
        await nc.publish(wire.dead_letter_subject("shipping", f"orders.OrderPaid.o-{i}"), b"x")
    await nc.flush()

    async def all_stored() -> bool:
        return (await js.stream_info(wire.DEAD_LETTER_STREAM)).state.messages == MANY + 3

    await eventually(all_stored, what="every dead letter stored")
    assert await deadletter.count(js, "billing") == MANY
    assert await deadletter.count(js, "shipping") == 3
    assert await deadletter.purge(js, "billing") == MANY
    assert await deadletter.count(js, "billing") == 0
    assert await deadletter.count(js, "shipping") == 3
    # The counting consumers are gone, not left to expire.
    assert (await js.stream_info(wire.DEAD_LETTER_STREAM)).state.consumer_count == 0


async def test_no_dead_letter_stream_counts_zero(nc: Client) -> None:
    assert await deadletter.count(nc.jetstream(), "billing") == 0
