"""The one way tests wait for something: poll a check until it passes, within a bound.

Tests run on busy machines (CI shares two cores), so no test sleeps a fixed time or asserts
a duration: it polls with `eventually()` until the state it wants is there, and fails with
the last reason when it never comes.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

# Generous: a loaded two-core machine can be ten times slower than an idle one.
DEFAULT_WITHIN = 30.0


@overload
async def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    within: float = ...,
    interval: float = ...,
    retry_on: tuple[type[BaseException], ...] = ...,
    what: str = ...,
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T],
    *,
    within: float = ...,
    interval: float = ...,
    retry_on: tuple[type[BaseException], ...] = ...,
    what: str = ...,
) -> T: ...


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    *,
    within: float = DEFAULT_WITHIN,
    interval: float = 0.05,
    retry_on: tuple[type[BaseException], ...] = (AssertionError,),
    what: str = "",
) -> T:
    """Call `check` (sync or async) until it passes; return its result.

    It passes when it returns anything but `False` without raising one of `retry_on`
    (AssertionError by default: plain `assert` checks work). After `within` seconds the last
    failure is raised as an AssertionError naming `what`.
    """
    deadline = time.monotonic() + within
    attempts = 0
    while True:
        attempts += 1
        last: BaseException | None = None
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result is not False:
                return result
        except retry_on as exc:
            last = exc
        if time.monotonic() >= deadline:
            reason = f": {last!r}" if last is not None else " (check returned False)"
            label = what or getattr(check, "__name__", "check")
            raise AssertionError(
                f"{label} did not pass within {within:g}s ({attempts} attempts){reason}"
            ) from last
        await asyncio.sleep(interval)
