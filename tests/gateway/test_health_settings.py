"""The health settings: health_interval, health_timeout and health_stream."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, GatewayConfig, StreamConfig, load_config


def test_defaults() -> None:
    config = GatewayConfig()
    assert config.health_interval == 2.0
    assert config.health_timeout == 2.0
    assert config.health_stream == "JETGATE_HEALTH"


def test_durations_from_env_and_flags() -> None:
    config = load_config(
        env={"JETGATE_HEALTH_INTERVAL": "500ms", "JETGATE_HEALTH_STREAM": ""},
        overrides={"health_timeout": "3s"},
    )
    assert config.health_interval == 0.5
    assert config.health_timeout == 3.0
    assert config.health_stream == ""


@pytest.mark.parametrize("setting", ["health_interval", "health_timeout"])
@pytest.mark.parametrize("value", ["0", "0ms"])
def test_durations_must_be_positive(setting: str, value: str) -> None:
    with pytest.raises(ConfigError, match="must be positive"):
        load_config(env={}, overrides={setting: value})


@pytest.mark.parametrize("name", ["JETGATE HEALTH", "a.b", "x" * 65])
def test_health_stream_must_be_a_stream_name(name: str) -> None:
    with pytest.raises(ConfigError, match="health_stream"):
        GatewayConfig(health_stream=name)


def test_health_stream_must_not_be_a_declared_stream() -> None:
    orders = StreamConfig(name="ORDERS", subjects=("orders.>",))
    with pytest.raises(ConfigError, match="is a declared stream"):
        GatewayConfig(health_stream="ORDERS", streams=(orders,))
