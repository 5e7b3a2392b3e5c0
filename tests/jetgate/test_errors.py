"""One exception hierarchy: every package's errors map to the exit code of their kind."""

from __future__ import annotations

import pytest

from consumers.group import GroupConfigError
from gateway.config import ConfigError
from gateway.embedded import NatsServerError
from gateway.registry import RegistryError
from gateway.routing import RoutingError
from gateway.streams import StreamUpdateError, UnsafeStreamChange
from jetgate.errors import ConfigurationError, JetgateError, StartupError, exit_code
from observability.setup import TelemetryConfigError


@pytest.mark.parametrize(
    ("error", "kind", "builtin"),
    [
        (ConfigError("x"), ConfigurationError, ValueError),
        (RegistryError("x"), ConfigurationError, ValueError),
        (RoutingError(["x"]), ConfigurationError, ValueError),
        (GroupConfigError("x"), ConfigurationError, ValueError),
        (TelemetryConfigError("x"), ConfigurationError, ValueError),
        (UnsafeStreamChange({"S": []}), StartupError, ValueError),
        (StreamUpdateError("x"), StartupError, RuntimeError),
        (NatsServerError("x"), StartupError, RuntimeError),
    ],
)
def test_each_error_has_its_kind_and_keeps_its_builtin_base(
    error: Exception, kind: type[JetgateError], builtin: type[Exception]
) -> None:
    assert isinstance(error, kind)
    assert isinstance(error, builtin)  # callers that catch the builtin still do
    assert exit_code(error) == kind.exit_code


def test_exit_codes() -> None:
    assert exit_code(ConfigurationError("bad setting")) == 2
    assert exit_code(StartupError("NATS unreachable")) == 1
    assert exit_code(OSError("anything else")) == 1
