"""Configuration: jetgate.toml, JETGATE_* environment, CLI overrides, and every error."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import (
    ConfigError,
    GatewayConfig,
    StreamConfig,
    load_config,
    parse_duration,
    parse_size,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """\
[gateway]
listen = "127.0.0.1:6000"
publish_timeout = "3s"

[[streams]]
name = "ORDERS"
subjects = ["orders.>"]

[[routes]]
match = "jetgate.examples.orders.v1.*"
stream = "ORDERS"
subject_prefix = "orders"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "jetgate.toml"
    path.write_text(text)
    return path


# --- the repo's jetgate.toml --------------------------------------------------------------


def test_repo_config_loads() -> None:
    config = load_config(REPO_ROOT / "jetgate.toml")
    assert config.listen == "127.0.0.1:50051"
    assert config.nats_url == ""  # commented out: `jetgate up` embeds a nats-server
    assert config.source == "jetgate"
    assert config.publish_timeout == 5.0
    assert config.max_batch_entries == 1000
    assert config.type_modules == ("jetgate.examples.orders.v1.orders_pb2",)
    assert config.descriptor_sets == ()
    assert config.workers == ("consumers.demo:billing", "consumers.demo:shipping")

    assert [s.name for s in config.streams] == ["ORDERS"]
    orders = config.stream("ORDERS")
    assert orders.subjects == ("orders.>",)
    assert orders.storage == "file"
    assert orders.replicas == 1
    assert orders.retention == "limits"
    assert orders.duplicate_window == 120.0  # "2m"
    assert orders.max_age == 30 * 86400.0  # "30d"
    assert orders.discard == "old"
    assert orders.allow_atomic is True
    assert "orders.<EventType>.<order id>" in orders.description
    assert dict(orders.metadata) == {"jetgate.owner": "demo"}

    assert len(config.routes) == 1
    route = config.routes[0]
    # The demo routes the Order* events (not value types such as Money) to ORDERS.
    assert route.match == "jetgate.examples.orders.v1.Order*"
    assert route.stream == "ORDERS"
    assert route.subject_prefix == "orders"


def test_defaults_without_a_file() -> None:
    config = load_config(None)
    assert config == GatewayConfig()
    assert config.listen == "127.0.0.1:50051"
    assert config.streams == ()
    assert config.routes == ()


# --- precedence ---------------------------------------------------------------------------


def test_precedence_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL)

    from_file = load_config(path)
    assert from_file.listen == "127.0.0.1:6000"
    assert from_file.publish_timeout == 3.0
    assert from_file.source == "jetgate"  # default, not in the file

    env = {
        "JETGATE_LISTEN": "0.0.0.0:7000",
        "JETGATE_PUBLISH_TIMEOUT": "250ms",
        "JETGATE_SOURCE": "from-env",
        "JETGATE_NATS_URL": "nats://env:4222",
    }
    from_env = load_config(path, env=env)
    assert from_env.listen == "0.0.0.0:7000"
    assert from_env.publish_timeout == 0.25
    assert from_env.source == "from-env"
    assert from_env.nats_url == "nats://env:4222"

    overridden = load_config(
        path, env=env, overrides={"listen": "[::1]:8000", "publish_timeout": "2m"}
    )
    assert overridden.listen == "[::1]:8000"
    assert overridden.publish_timeout == 120.0
    # not overridden by a flag: the environment still wins over the file
    assert overridden.source == "from-env"
    assert overridden.nats_url == "nats://env:4222"


def test_env_ignores_unrelated_variables(tmp_path: Path) -> None:
    config = load_config(
        _write(tmp_path, MINIMAL),
        env={"LISTEN": "0.0.0.0:1", "HOME": "/root", "JETGATE_LOG_LEVEL": "DEBUG"},
    )
    assert config.listen == "127.0.0.1:6000"


def test_env_lists_are_comma_separated(tmp_path: Path) -> None:
    config = load_config(
        _write(tmp_path, MINIMAL),
        env={"JETGATE_TYPE_MODULES": "a.b_pb2, c.d_pb2,,", "JETGATE_MAX_BATCH_ENTRIES": "10"},
    )
    assert config.type_modules == ("a.b_pb2", "c.d_pb2")
    assert config.max_batch_entries == 10


def test_workers_from_file_env_and_flag(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        'publish_timeout = "3s"\n', 'publish_timeout = "3s"\nworkers = ["a:b"]\n'
    )
    path = _write(tmp_path, text)
    assert load_config(path).workers == ("a:b",)
    from_env = load_config(path, env={"JETGATE_WORKERS": "m.n:billing, m.n:shipping"})
    assert from_env.workers == ("m.n:billing", "m.n:shipping")
    assert load_config(path, overrides={"workers": ""}).workers == ()


def test_stream_settings_from_env_and_stream_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL)
    config = load_config(
        path,
        env={"JETGATE_STREAMS_ORDERS_REPLICAS": "3"},
        stream_overrides=["ORDERS.max_age=1h"],
    )
    orders = config.stream("ORDERS")
    assert orders.replicas == 3
    assert orders.max_age == 3600.0
    assert orders.subjects == ("orders.>",)  # untouched settings stay


def test_stream_override_beats_stream_env(tmp_path: Path) -> None:
    config = load_config(
        _write(tmp_path, MINIMAL),
        env={"JETGATE_STREAMS_ORDERS_REPLICAS": "3", "JETGATE_STREAMS_ORDERS_STORAGE": "memory"},
        stream_overrides=["ORDERS.replicas=5", "ORDERS.subjects=orders.>,legacy.orders.>"],
    )
    orders = config.stream("ORDERS")
    assert orders.replicas == 5
    assert orders.storage == "memory"
    assert orders.subjects == ("orders.>", "legacy.orders.>")


def test_stream_window_env_is_a_gateway_setting(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MINIMAL), env={"JETGATE_STREAM_WINDOW": "16"})
    assert config.stream_window == 16


def test_stream_env_picks_the_longest_matching_stream_name(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        MINIMAL + '\n[[streams]]\nname = "ORDERS_V2"\nsubjects = ["orders2.>"]\n',
    )
    config = load_config(path, env={"JETGATE_STREAMS_ORDERS_V2_REPLICAS": "3"})
    assert config.stream("ORDERS_V2").replicas == 3
    assert config.stream("ORDERS").replicas == 1


# --- durations and sizes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("7d", 7 * 86400.0),
        ("1.5h", 5400.0),
        (" 10 s ", 10.0),
        ("45", 45.0),
        (30, 30.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(raw: object, seconds: float) -> None:
    assert parse_duration(raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["", "soon", "5 years", "-5s", "1w", "s", True, "1h30m"])
def test_parse_duration_rejects(raw: object) -> None:
    with pytest.raises(ConfigError, match="duration"):
        parse_duration(raw)


@pytest.mark.parametrize(
    ("raw", "size"),
    [
        ("64MiB", 64 * 1024 * 1024),
        (1024, 1024),
        ("-1", -1),
        (-1, -1),
        ("1KiB", 1024),
        ("2GiB", 2 * 1024**3),
        ("1TiB", 1024**4),
        ("512B", 512),
        ("4096", 4096),
    ],
)
def test_parse_size(raw: object, size: int) -> None:
    assert parse_size(raw) == size


@pytest.mark.parametrize("raw", ["", "big", "1.5GiB", "64MB", "64 mib", "1e6"])
def test_parse_size_rejects(raw: object) -> None:
    with pytest.raises(ConfigError, match="byte size"):
        parse_size(raw)


def test_sizes_and_durations_in_a_stream_table(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        MINIMAL.replace(
            'subjects = ["orders.>"]',
            'subjects = ["orders.>"]\nmax_bytes = "64MiB"\nmax_msg_size = 1024\n'
            'max_age = "7d"\nduplicate_window = "500ms"\nallow_msg_ttl = "yes"',
        ),
    )
    orders = load_config(path).stream("ORDERS")
    assert orders.max_bytes == 64 << 20
    assert orders.max_msg_size == 1024
    assert orders.max_age == 604800.0
    assert orders.duplicate_window == 0.5
    assert orders.allow_msg_ttl is True


# --- errors -------------------------------------------------------------------------------


def _error(tmp_path: Path, text: str, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text), **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def test_unknown_section(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL + "\n[gatway]\nlisten = 'x:1'\n")
    assert "gatway" in message
    assert "section" in message


def test_unknown_gateway_setting(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL.replace("[gateway]", "[gateway]\nlisten_port = 1"))
    assert "listen_port" in message
    assert "gateway" in message


def test_unknown_stream_setting(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL.replace('name = "ORDERS"', 'name = "ORDERS"\nttl = 5'))
    assert "streams.ORDERS" in message
    assert "ttl" in message


def test_unknown_stream_setting_from_env(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL, env={"JETGATE_STREAMS_ORDERS_COLOUR": "blue"})
    assert "colour" in message


def test_bad_duration(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL.replace('"3s"', '"soon"'))
    assert "publish_timeout" in message
    assert "soon" in message


def test_bad_stream_duration_from_override(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL, stream_overrides=["ORDERS.max_age=forever"])
    assert "streams.ORDERS.max_age" in message


def test_bad_bool(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL, env={"JETGATE_STREAMS_ORDERS_ALLOW_MSG_TTL": "maybe"})
    assert "allow_msg_ttl" in message
    assert "maybe" in message


def test_bad_int(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL, overrides={"max_pending": "lots"})
    assert "max_pending" in message


def test_bad_size(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL, stream_overrides=["ORDERS.max_bytes=huge"])
    assert "max_bytes" in message


@pytest.mark.parametrize("replicas", ["2", "0", "4", "7"])
def test_replicas_must_be_1_3_or_5(tmp_path: Path, replicas: str) -> None:
    message = _error(tmp_path, MINIMAL, stream_overrides=[f"ORDERS.replicas={replicas}"])
    assert "replicas" in message
    assert "ORDERS" in message


def test_replicas_must_not_be_a_boolean(tmp_path: Path) -> None:
    message = _error(
        tmp_path, MINIMAL.replace('name = "ORDERS"', 'name = "ORDERS"\nreplicas = true')
    )
    assert "replicas" in message


@pytest.mark.parametrize(
    ("setting", "value"), [("storage", "disk"), ("retention", "forever"), ("discard", "oldest")]
)
def test_bad_choices(tmp_path: Path, setting: str, value: str) -> None:
    message = _error(tmp_path, MINIMAL, stream_overrides=[f"ORDERS.{setting}={value}"])
    assert setting in message
    assert value in message


def test_route_to_unknown_stream(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL.replace('stream = "ORDERS"', 'stream = "BILLING"'))
    assert "BILLING" in message
    assert "jetgate.examples.orders.v1.*" in message


def test_duplicate_stream_names_in_gateway_config() -> None:
    orders = StreamConfig(name="ORDERS", subjects=("orders.>",))
    with pytest.raises(ConfigError, match="unique"):
        GatewayConfig(streams=(orders, StreamConfig(name="ORDERS", subjects=("o2.>",))))


def test_duplicate_stream_names_in_file(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL + '\n[[streams]]\nname = "ORDERS"\nsubjects = ["more.>"]\n')
    assert "ORDERS" in message


def test_env_override_for_missing_stream(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL, env={"JETGATE_STREAMS_BILLING_REPLICAS": "3"})
    assert "JETGATE_STREAMS_BILLING_REPLICAS" in message


def test_stream_override_for_missing_stream(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL, stream_overrides=["BILLING.replicas=3"])
    assert "BILLING" in message
    assert "no such stream" in message


@pytest.mark.parametrize("item", ["ORDERS.replicas", "replicas=3", "ORDERS", ""])
def test_malformed_stream_set_item(tmp_path: Path, item: str) -> None:
    message = _error(tmp_path, MINIMAL, stream_overrides=[item])
    assert "--stream-set" in message
    assert "STREAM.field=value" in message


@pytest.mark.parametrize("listen", ["localhost", ":50051", "host:", "host:port", "50051"])
def test_bad_listen_address(tmp_path: Path, listen: str) -> None:
    message = _error(tmp_path, MINIMAL, overrides={"listen": listen})
    assert "listen" in message
    assert repr(listen) in message


def test_listen_port_out_of_range(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL, overrides={"listen": "127.0.0.1:99999"})
    assert "listen" in message


@pytest.mark.parametrize("entries", ["0", "1001", "-1"])
def test_max_batch_entries_out_of_range(tmp_path: Path, entries: str) -> None:
    message = _error(tmp_path, MINIMAL, env={"JETGATE_MAX_BATCH_ENTRIES": entries})
    assert "max_batch_entries" in message


@pytest.mark.parametrize("entries", ["1", "1000"])
def test_max_batch_entries_bounds_are_inclusive(tmp_path: Path, entries: str) -> None:
    config = load_config(_write(tmp_path, MINIMAL), overrides={"max_batch_entries": entries})
    assert config.max_batch_entries == int(entries)


@pytest.mark.parametrize("target", ["consumers.demo", "consumers.demo:", ":billing"])
def test_worker_needs_module_and_group(tmp_path: Path, target: str) -> None:
    message = _error(tmp_path, MINIMAL, env={"JETGATE_WORKERS": target})
    assert "workers" in message
    assert "MODULE:GROUP" in message


def test_non_positive_publish_timeout(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL, overrides={"publish_timeout": "0s"})
    assert "publish_timeout" in message


def test_missing_required_stream_field(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL.replace('subjects = ["orders.>"]\n', ""))
    assert "subjects" in message


def test_empty_stream_subjects(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL.replace('["orders.>"]', "[]"))
    assert "subjects" in message
    assert "ORDERS" in message


def test_missing_required_route_field(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL.replace('subject_prefix = "orders"\n', ""))
    assert "subject_prefix" in message


def test_bad_stream_name(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL.replace('"ORDERS"', '"OR.DERS"'))
    assert "OR.DERS" in message


def test_non_positive_duplicate_window(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL, stream_overrides=["ORDERS.duplicate_window=0"])
    assert "duplicate_window" in message


def test_invalid_toml(tmp_path: Path) -> None:
    message = _error(tmp_path, "[gateway\nlisten = ")
    assert "jetgate.toml" in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_config(tmp_path / "nope.toml")


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
