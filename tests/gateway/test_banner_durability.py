"""The banner's durability line claims no more than the running setup gives."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gateway.banner import durability_line
from gateway.config import GatewayConfig, StreamConfig
from gateway.embedded import NatsServer

R1 = StreamConfig(name="A", subjects=("a.>",))
R3 = StreamConfig(name="B", subjects=("b.>",), replicas=3)


def test_embedded_fsync_says_fsynced_before_the_ack_on_one_node(tmp_path: Path) -> None:
    line = durability_line(GatewayConfig(streams=(R1,)), NatsServer(tmp_path, sync_always=True))
    assert "fsynced to disk on 1 node (R1 streams) before the ack" in line


def test_embedded_lazy_says_a_power_loss_can_lose_an_ok(tmp_path: Path) -> None:
    config = GatewayConfig(streams=(R1,), durability="lazy")
    line = durability_line(config, NatsServer(tmp_path, sync_always=False))
    assert "NOT yet fsynced" in line
    assert "power loss" in line
    assert "fsynced to disk" not in line


def test_external_server_is_only_what_the_operator_declared() -> None:
    config = GatewayConfig(streams=(R1, R3))
    line = durability_line(config, None)
    assert line.startswith("Durability: declared fsync")
    assert "only if that server runs sync_interval: always" in line
    assert "each replica (R1/R3 streams)" in line
    lazy = durability_line(dataclasses.replace(config, durability="lazy"), None)
    assert "can lose it" in lazy
