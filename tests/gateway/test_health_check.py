"""StoreCheck against a real nats-server: a probe store, the probe stream kept in place."""

from __future__ import annotations

from nats.aio.client import Client

from gateway.health_check import PROBE_PAYLOAD, StoreCheck


async def test_a_store_passes_and_one_message_is_kept(nc: Client) -> None:
    check = StoreCheck(stream="PROBE")
    await check.prepare(nc)
    await check.prepare(nc)  # idempotent: a restarted gateway finds it in place
    assert await check.run(nc) == ""
    assert await check.run(nc) == ""
    info = await nc.jetstream().stream_info("PROBE")
    assert info.state.messages == 1
    assert info.state.bytes >= len(PROBE_PAYLOAD)


async def test_a_deleted_probe_stream_is_made_again(nc: Client) -> None:
    check = StoreCheck(stream="PROBE")
    await check.prepare(nc)
    await nc.jetstream().delete_stream("PROBE")
    assert await check.run(nc) == ""
    assert (await nc.jetstream().stream_info("PROBE")).state.messages == 1


async def test_without_a_probe_stream_it_only_asks_jetstream(nc: Client) -> None:
    check = StoreCheck(stream="")
    await check.prepare(nc)
    assert await check.run(nc) == ""
    assert (await nc.jetstream().account_info()).streams == 0
