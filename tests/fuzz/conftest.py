"""Fuzz fixtures: hypothesis profiles and one live gateway per session.

Profiles (env `JETGATE_FUZZ_PROFILE`):
- `ci` (default, part of `make test`): 150 examples per test, derandomized (the same
  examples every run: a failure in CI reproduces locally), no example database, and no
  shrinking: shrinking a failure against a live gateway can take five minutes per test,
  which `make test` cannot afford; the first failing example is reported as drawn.
- `shrink`: `ci` with shrinking, to get the minimal form of a failure `ci` reported.
- `long` (`make fuzz`): 3000 examples per test, random (a new exploration each run;
  hypothesis prints a reproduction blob of any failure), shrunk.
No deadline in either: a busy two-core machine is slow, and speed is not a property here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, Phase, settings

from tests.fuzz.live import LiveGateway
from tests.fuzz.strategies import MAX_PAYLOAD

_COMMON = {
    "deadline": None,
    "database": None,
    "print_blob": True,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
}
_NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target)
settings.register_profile(
    "ci",
    max_examples=150,
    derandomize=True,
    phases=_NO_SHRINK,
    **_COMMON,  # type: ignore[arg-type]
)
settings.register_profile("shrink", max_examples=150, derandomize=True, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("long", max_examples=3000, **_COMMON)  # type: ignore[arg-type]
settings.load_profile(os.environ.get("JETGATE_FUZZ_PROFILE", "ci"))


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    """The live gateway (nats-server, gateway, reader, worker) shared by every fuzz test."""
    target = LiveGateway(tmp_path_factory.mktemp("fuzz"))
    target.start()
    try:
        assert target.max_payload == MAX_PAYLOAD
        yield target
    finally:
        target.close()
