"""Jaeger v2 (all-in-one, in-memory) as a test peer, on free loopback ports only.

The launcher (its config pins every listener to 127.0.0.1 on a free port) is
`bench.jaeger`, shared with the benchmark's traced scenarios; here it runs the binary
`make tools` built, and a start-up failure fails the test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.jaeger import Jaeger, JaegerError, run_jaeger
from tests.interop.conftest import peer

__all__ = ["Jaeger", "jaeger_fixture"]


@pytest.fixture(name="jaeger")
def jaeger_fixture(tmp_path: Path) -> Iterator[Jaeger]:
    """A fresh Jaeger (in-memory) on free loopback ports; stopped after the test."""
    with contextlib.ExitStack() as stack:
        try:
            jaeger = stack.enter_context(run_jaeger(tmp_path / "jaeger", peer("jaeger")))
        except JaegerError as exc:
            pytest.fail(f"jaeger did not start: {exc}", pytrace=False)
        yield jaeger
