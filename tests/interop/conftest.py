"""Interop fixtures: the real gateway (grpc.aio, in-process) from the integration suite.

The fixture functions are imported by name so pytest registers them here too;
`pytest_plugins` is not allowed in a non-root conftest under pytest 9.
"""

from __future__ import annotations

from tests.integration.conftest import gateway, gateway_config, stub  # noqa: F401
