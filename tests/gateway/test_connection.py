"""NatsSupervisor against a real nats-server: start-up, health reporting, shutdown."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS

from gateway.connection import NatsSupervisor
from gateway.health_check import StoreCheck


async def test_a_failed_preparation_closes_the_connection_and_raises(nats_url: str) -> None:
    seen: list[NATS] = []

    async def prepare(nc: NATS) -> None:
        seen.append(nc)
        raise ValueError("unsafe stream change")

    async def on_serving(serving: bool) -> None:
        raise AssertionError(f"health reported ({serving}) before the gateway listens")

    supervisor = NatsSupervisor(
        nats_url, name="test", prepare=prepare, on_serving=on_serving, check=StoreCheck(stream="")
    )
    with pytest.raises(ValueError, match="unsafe stream change"):
        await supervisor.connect(5.0)
    assert len(seen) == 1
    assert seen[0].is_closed
    with pytest.raises(RuntimeError, match="not connected"):
        _ = supervisor.nc
    await supervisor.close()


async def test_health_is_reported_from_watch_until_close(nats_url: str) -> None:
    reported: list[bool] = []

    async def prepare(nc: NATS) -> None:
        await nc.jetstream().account_info()

    async def on_serving(serving: bool) -> None:
        reported.append(serving)

    supervisor = NatsSupervisor(
        nats_url,
        name="test",
        prepare=prepare,
        on_serving=on_serving,
        check=StoreCheck(stream="PROBE"),
    )
    nc = await supervisor.connect(5.0)
    assert reported == []
    assert (await nc.jetstream().stream_info("PROBE")).config.max_msgs_per_subject == 1
    await supervisor.watch()
    assert reported == [True]
    assert supervisor.serving
    await supervisor.close()
    assert reported == [True, False]
    assert nc.is_closed
