"""InFlightBudget: the pure accounting behind max_inflight_request_bytes."""

from __future__ import annotations

import asyncio

import pytest

from gateway.limits import InFlightBudget, server_options
from tests.support.eventually import eventually


def test_try_acquire_takes_only_what_fits() -> None:
    budget = InFlightBudget(100)
    assert budget.try_acquire(60)
    assert not budget.try_acquire(41)
    assert budget.try_acquire(40)
    budget.release(60)
    assert budget.in_use == 40
    assert budget.try_acquire(60)


async def test_acquire_waits_for_room_in_line() -> None:
    budget = InFlightBudget(100)
    assert budget.try_acquire(90)
    first = asyncio.ensure_future(budget.acquire(50))
    second = asyncio.ensure_future(budget.acquire(20))
    await asyncio.sleep(0)
    assert not first.done()
    assert not second.done()
    assert not budget.try_acquire(5), "a waiter is in line: nobody jumps ahead"
    budget.release(90)
    await eventually(lambda: first.done() and second.done())
    assert budget.in_use == 70


async def test_cancelled_waiter_hands_its_turn_on() -> None:
    budget = InFlightBudget(100)
    assert budget.try_acquire(100)
    first = asyncio.ensure_future(budget.acquire(80))
    second = asyncio.ensure_future(budget.acquire(10))
    await asyncio.sleep(0)
    first.cancel()
    budget.release(100)
    await eventually(second.done)
    assert budget.in_use == 10


async def test_acquire_of_more_than_the_limit_is_an_error() -> None:
    with pytest.raises(ValueError, match="exceed"):
        await InFlightBudget(10).acquire(11)


def test_server_options_accept_ten_second_client_pings() -> None:
    options = dict(server_options())
    assert options["grpc.http2.min_ping_interval_without_data_ms"] <= 10_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.max_concurrent_streams"] >= 1
