"""NatsSupervisor against a real nats-server: start-up, health reporting, shutdown."""

from __future__ import annotations

import asyncio

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


class CancelLostInCheck(StoreCheck):
    """A check whose second run waits until cancelled and then answers as if the probe's
    reply had come: what nats-py's `asyncio.wait_for` does on Python 3.11 when a
    cancellation arrives with the reply (gh-86296). The other runs are real."""

    def __init__(self) -> None:
        super().__init__(stream="")
        self.runs = 0
        self.waiting = asyncio.Event()
        self.lost = 0

    async def run(self, nc: NATS) -> str:
        self.runs += 1
        if self.runs != 2:
            return await super().run(nc)
        self.waiting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.lost += 1
        return ""


async def test_close_ends_the_watchdog_even_when_its_cancellation_is_lost(nats_url: str) -> None:
    async def prepare(nc: NATS) -> None:
        await nc.jetstream().account_info()

    async def on_serving(serving: bool) -> None:
        pass

    check = CancelLostInCheck()
    supervisor = NatsSupervisor(
        nats_url,
        name="test",
        prepare=prepare,
        on_serving=on_serving,
        check=check,
        check_interval=0.01,
    )
    nc = await supervisor.connect(5.0)
    await supervisor.watch()
    await check.waiting.wait()  # the watchdog's second check is under way
    closing = asyncio.ensure_future(supervisor.close())
    # Bounded so that a hang fails here rather than stalling the suite (no speed is asserted).
    done, _ = await asyncio.wait([closing], timeout=60)
    assert done, "close() waits for a watchdog that lost its cancellation"
    await closing
    assert check.lost == 1
    assert nc.is_closed
