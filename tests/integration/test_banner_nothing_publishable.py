"""The banner says when nothing is publishable, and names the settings that fix it."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.banner import announce
from gateway.config import GatewayConfig
from gateway.workers import WorkerProcesses
from observability import Telemetry
from tests.integration.conftest import serving


def _no_workers() -> WorkerProcesses:
    return WorkerProcesses((), nats_url="", gateway_address="")


async def test_no_types_says_so(nats_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    config = GatewayConfig(nats_url=nats_url, listen="127.0.0.1:0", metrics_listen="")

    async with serving(config) as gateway:
        announce(gateway, None, _no_workers(), Telemetry())

    out = capsys.readouterr().out
    assert "Nothing is publishable yet: no event types are registered" in out
    assert "type_modules or descriptor_sets" in out
    assert "jetgate init" in out
    assert "grpcurl" not in out


async def test_types_without_routes_say_so(
    gateway_config: GatewayConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    config = dataclasses.replace(gateway_config, routes=())

    async with serving(config) as gateway:
        announce(gateway, None, _no_workers(), Telemetry())

    out = capsys.readouterr().out
    assert "registered event types has a route" in out
    assert "[[routes]]" in out


async def test_a_routed_type_shows_how_to_read_it_decoded(
    gateway_config: GatewayConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serving(gateway_config) as gateway:
        announce(gateway, None, _no_workers(), Telemetry())

    out = capsys.readouterr().out
    assert "Nothing is publishable" not in out
    assert "jetgate events ORDERS --key o-42" in out
    assert "--translate 'jetgate decode --subject {{Subject}}'" in out
