"""`--processes`: the setting and what a gateway process is started with (pure logic; the
processes themselves: tests/integration/test_processes.py)."""

from __future__ import annotations

import os
import socket

import pytest

from gateway.config import ConfigError, load_config
from gateway.processes import GatewayProcesses, child_arguments, reserve_port


def test_auto_is_one_process_per_core() -> None:
    config = load_config(None, env={"JETGATE_PROCESSES": "auto"}, overrides={})
    assert config.processes == (os.cpu_count() or 1)
    assert load_config(None, env={}, overrides={"processes": "3"}).processes == 3


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_a_bad_process_count_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="processes"):
        load_config(None, env={}, overrides={"processes": bad})


def test_a_child_gets_the_arguments_but_the_supervisors_own() -> None:
    argv = [
        *("up", "--config", "j.toml", "--processes", "2", "--nats-port=0"),
        *("--listen", "127.0.0.1:0", "--metrics-listen=127.0.0.1:9464", "--grace", "3"),
    ]
    assert child_arguments(argv) == ["--config", "j.toml", "--grace", "3"]


def test_each_child_has_its_own_metrics_port_and_the_shared_listen_port() -> None:
    children = GatewayProcesses(
        2, argv=["serve"], listen="127.0.0.1:7000", metrics_listen="127.0.0.1:9500"
    )
    first, second = children.command("1", 0), children.command("2", 1)
    assert first[-4:] == ["--listen", "127.0.0.1:7000", "--metrics-listen", "127.0.0.1:9500"]
    assert second[-4:] == ["--listen", "127.0.0.1:7000", "--metrics-listen", "127.0.0.1:9501"]
    assert first[first.index("--processes") :][:2] == ["--processes", "1"]
    assert children.environment("2", 1)["JETGATE_PROCESS"] == "2/2"


def test_a_port_0_is_resolved_and_held_for_reuse() -> None:
    held, listen = reserve_port("127.0.0.1:0")
    with held:
        port = int(listen.rpartition(":")[2])
        assert port > 0
        with socket.socket() as child:  # what every gateway process does (gRPC, Linux)
            child.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            child.bind(("127.0.0.1", port))
            child.listen()
