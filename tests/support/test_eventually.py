"""eventually(): passes as soon as the check does, fails with the last reason when it never does."""

from __future__ import annotations

import pytest

from tests.support.eventually import eventually


async def test_returns_the_first_passing_result() -> None:
    calls: list[int] = []

    def check() -> int:
        calls.append(1)
        assert len(calls) >= 3, "not yet"
        return len(calls)

    assert await eventually(check, interval=0.001) == 3


async def test_awaits_async_checks_and_retries_false() -> None:
    calls: list[int] = []

    async def check() -> bool:
        calls.append(1)
        return len(calls) == 2

    assert await eventually(check, interval=0.001) is True
    assert len(calls) == 2


async def test_fails_with_the_last_reason() -> None:
    def never() -> None:
        raise AssertionError("still 0 messages")

    with pytest.raises(AssertionError, match=r"stored did not pass within .*still 0 messages"):
        await eventually(never, within=0.05, interval=0.01, what="stored")


async def test_other_errors_are_not_retried_unless_asked() -> None:
    def broken() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        await eventually(broken, within=1)
    with pytest.raises(AssertionError, match="KeyError"):
        await eventually(broken, within=0.05, interval=0.01, retry_on=(KeyError,))
