"""Gateway configuration: `jetgate.toml`, overridden by `JETGATE_*` variables and CLI flags.

Precedence, lowest first: dataclass defaults, the TOML file, the environment, CLI flags.
Gateway settings are overridden by `JETGATE_<SETTING>` (e.g. `JETGATE_NATS_URL`,
`JETGATE_LISTEN`, `JETGATE_PUBLISH_TIMEOUT`) and `--<setting>` flags; stream settings by
`JETGATE_STREAMS_<STREAM>_<FIELD>` (e.g. `JETGATE_STREAMS_ORDERS_REPLICAS=3`) and
`--stream-set ORDERS.replicas=3`. Lists are comma-separated in both. Durations are
seconds or strings such as `500ms`, `30s`, `2m`, `1h`, `7d`; byte sizes accept `KiB`/`MiB`/`GiB`.
The `[gateway.tls]` and `[gateway.auth]` tables: `gateway.security_config`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from gateway.groups import GroupConfig
from gateway.security_config import SECURITY_SETTINGS, TABLES, AuthConfig, TlsConfig
from jetgate import nats_options
from jetgate.errors import ConfigurationError
from jetgate.nats_options import NatsOptions

Storage = Literal["file", "memory"]
Retention = Literal["limits", "interest", "workqueue"]
Discard = Literal["old", "new"]
# fsync: the server syncs every write before acknowledging it (`jetgate up` runs it so;
# the gateway group-commits); lazy: nats-server's default sync_interval (acknowledged
# before it is on disk).
Durability = Literal["fsync", "lazy"]

ENV_PREFIX = "JETGATE_"
STREAM_ENV_PREFIX = "JETGATE_STREAMS_"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(-?\d+)\s*(B|KiB|MiB|GiB|TiB)?\s*$")
_SIZE_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40, None: 1}


class ConfigError(ConfigurationError, ValueError):
    """The configuration is invalid; the message says where and why."""


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like `2m`."""
    if isinstance(value, bool):
        raise ConfigError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ConfigError(f"not a duration: {value!r} (use e.g. 30s, 2m, 1h)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_size(value: object) -> int:
    """Bytes from an int or a string like `64MiB`; -1 means unlimited."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ConfigError(f"not a byte size: {value!r} (use e.g. 1048576 or 64MiB)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamConfig:
    """One JetStream stream, created or safely updated at start-up."""

    name: str
    subjects: tuple[str, ...]
    storage: Storage = "file"
    replicas: int = 1
    retention: Retention = "limits"
    max_age: float = 0.0  # seconds; 0 = forever
    max_bytes: int = -1
    max_msgs: int = -1
    max_msg_size: int = -1
    duplicate_window: float = 120.0  # seconds
    discard: Discard = "old"
    allow_msg_ttl: bool = False
    # Needed by PublishBatch(atomic=true).
    allow_atomic: bool = True
    description: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.name):
            raise ConfigError(f"stream name {self.name!r}: use 1-64 letters, digits, '_' or '-'")
        if not self.subjects:
            raise ConfigError(f"stream {self.name}: subjects must not be empty")
        _check_choice(f"stream {self.name}: storage", self.storage, Storage)
        _check_choice(f"stream {self.name}: retention", self.retention, Retention)
        _check_choice(f"stream {self.name}: discard", self.discard, Discard)
        if self.replicas not in (1, 3, 5):
            raise ConfigError(f"stream {self.name}: replicas must be 1, 3 or 5")
        if self.duplicate_window <= 0:
            raise ConfigError(f"stream {self.name}: duplicate_window must be positive")
        if 0 < self.max_age < 0.1:
            raise ConfigError(f"stream {self.name}: max_age must be 0 (forever) or at least 100ms")
        if self.max_age > 0 and self.duplicate_window > self.max_age:
            raise ConfigError(
                f"stream {self.name}: duplicate_window ({self.duplicate_window:g}s) must not "
                f"exceed max_age ({self.max_age:g}s)"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    """Event types matching `match` (a full proto name or glob like `pkg.v1.*`) go to `stream`."""

    match: str
    stream: str
    subject_prefix: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    """Everything `jetgate serve` / `jetgate up` needs."""

    listen: str = "127.0.0.1:50051"
    # Empty: `jetgate up` starts an embedded nats-server; `jetgate serve` needs a URL.
    # Several servers: comma-separated (an array in TOML).
    nats_url: str = ""
    # NATS credentials and TLS (jetgate/nats_options.py): one auth method at most. The
    # secrets (nats_password, nats_token) have no flag: a variable or a *_file setting.
    nats_user: str = ""
    nats_password: str = field(default="", repr=False)
    nats_password_file: str = ""
    nats_token: str = field(default="", repr=False)
    nats_token_file: str = ""
    nats_nkey_seed_file: str = ""
    nats_creds_file: str = ""
    nats_tls_ca_file: str = ""
    nats_tls_cert_file: str = ""
    nats_tls_key_file: str = ""
    nats_tls_handshake_first: bool = False
    # ce-source of events published without one.
    source: str = "jetgate"
    # Longest wait for JetStream's acknowledgement of one publish (capped by the RPC deadline).
    publish_timeout: float = 5.0
    # What an OK means on disk (see Durability); "fsync" turns on group commit.
    durability: Durability = "fsync"
    # Largest PublishBatch / PublishStream request (JetStream atomic batches stop at 1000).
    max_batch_entries: int = 1000
    # Health: how often the gateway checks that JetStream answers, and how long it waits
    # for the answer before saying NOT_SERVING (see gateway.connection).
    health_interval: float = 2.0
    health_timeout: float = 2.0
    # The stream health checks store a tiny message in (can JetStream store now?); empty:
    # only ask JetStream to answer.
    health_stream: str = "JETGATE_HEALTH"
    # Messages awaiting a JetStream ack at once, over all RPCs (the pipeline window).
    max_pending: int = 4096
    # PublishStream request messages in flight per stream before reading pauses.
    stream_window: int = 8
    # Serialized bytes of requests processed at once, all calls together (gateway/limits.py):
    # a Publish/PublishBatch beyond it is RESOURCE_EXHAUSTED, a PublishStream message waits.
    max_inflight_request_bytes: int = 128 * 1024 * 1024
    # Python modules with generated *_pb2 types to accept, and FileDescriptorSet files.
    type_modules: tuple[str, ...] = ()
    descriptor_sets: tuple[str, ...] = ()
    # Where `jetgate up` keeps the embedded nats-server's JetStream data.
    data_dir: str = "data"
    # `jetgate up` without nats_url: nodes of the embedded JetStream cluster (0/1: one
    # server; 3 or 5: a cluster on loopback, streams replicated on every node).
    cluster: int = 0
    # Consumer groups (`MODULE:GROUP`) `jetgate up` runs one worker process of each.
    workers: tuple[str, ...] = ()
    # Prometheus scrape endpoint (HOST:PORT; empty: none). `jetgate up` gives its workers
    # the following ports (port 0: any free port for each).
    metrics_listen: str = "127.0.0.1:9464"
    # Gateway processes sharing `listen` (SO_REUSEPORT; gateway/processes.py); `auto`: one
    # per core.
    processes: int = 1
    # Plaintext gRPC on a non-loopback `listen` is refused unless this says it is meant.
    insecure: bool = False
    tls: TlsConfig = field(default_factory=TlsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    streams: tuple[StreamConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    # Consumer groups open to Subscribe (gateway/groups.py).
    groups: tuple[GroupConfig, ...] = ()

    def __post_init__(self) -> None:
        _check_address("listen", self.listen)
        if self.metrics_listen:
            _check_address("metrics_listen", self.metrics_listen)
        _check_choice("durability", self.durability, Durability)
        self.nats_options()  # raises when the NATS settings contradict each other
        if self.cluster not in (0, 1, 3, 5):
            raise ConfigError(f"cluster must be 0, 1, 3 or 5 nodes; got {self.cluster}")
        if self.publish_timeout <= 0:
            raise ConfigError("publish_timeout must be positive")
        if self.health_interval <= 0 or self.health_timeout <= 0:
            raise ConfigError("health_interval and health_timeout must be positive")
        if self.health_stream and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.health_stream):
            raise ConfigError(
                f"health_stream {self.health_stream!r}: use 1-64 letters, digits, '_' or '-'"
            )
        if not 1 <= self.max_batch_entries <= 1000:
            raise ConfigError("max_batch_entries must be within 1..1000")
        if self.max_pending < 1 or self.stream_window < 1:
            raise ConfigError("max_pending and stream_window must be at least 1")
        if self.max_inflight_request_bytes < 1024 * 1024:
            raise ConfigError("max_inflight_request_bytes must be at least 1MiB")
        if not 1 <= self.processes <= 1024:
            raise ConfigError("processes must be within 1..1024 (or auto: one per core)")
        for target in self.workers:
            module, _, group = target.partition(":")
            if not module or not group:
                raise ConfigError(f"workers: {target!r}: use MODULE:GROUP")
        names = [s.name for s in self.streams]
        if len(set(names)) != len(names):
            raise ConfigError(f"stream names must be unique: {names}")
        if self.health_stream in names:
            raise ConfigError(f"health_stream {self.health_stream!r} is a declared stream")
        for route in self.routes:
            if route.stream not in names:
                raise ConfigError(f"route {route.match!r} names unknown stream {route.stream!r}")
        groups = [g.name for g in self.groups]
        if len(set(groups)) != len(groups):
            raise ConfigError(f"group names must be unique: {groups}")
        for declared in self.groups:
            if declared.stream not in names:
                raise ConfigError(
                    f"group {declared.name!r} names unknown stream {declared.stream!r}"
                )

    def stream(self, name: str) -> StreamConfig:
        return next(s for s in self.streams if s.name == name)

    def nats_options(self) -> NatsOptions:
        """How to connect to NATS: the `nats_*` settings (default URL when `nats_url` is '')."""
        return nats_options.options({s: getattr(self, s) for s in nats_options.SETTINGS})


# The scalar gateway settings: each has a `JETGATE_<NAME>` variable and a `--<name>` flag.
_TABLES = ("streams", "routes", "groups", *TABLES)
GATEWAY_SETTINGS = tuple(f.name for f in dataclasses.fields(GatewayConfig) if f.name not in _TABLES)


def _check_address(name: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{name} {value!r}: use HOST:PORT")


def _check_choice(what: str, value: object, choices: Any) -> None:
    if value not in get_args(choices):
        raise ConfigError(f"{what} must be one of {', '.join(get_args(choices))}; got {value!r}")


def _coerce(cls: type[Any], name: str, raw: object, where: str) -> object:
    """Convert a TOML/env/flag value to the type of dataclass field `name`."""
    kind = {f.name: f for f in dataclasses.fields(cls)}[name].type
    try:
        if name in {
            "max_age",
            "duplicate_window",
            "publish_timeout",
            "health_interval",
            "health_timeout",
            "jwt_leeway",
            "reload_interval",
            "ack_wait",
        }:
            return parse_duration(raw)
        if name == "backoff":
            items = raw.split(",") if isinstance(raw, str) else raw
            if not isinstance(items, list | tuple):
                raise ConfigError(f"not a list: {raw!r}")
            return tuple(parse_duration(i) for i in items if str(i).strip())
        if name in {"max_bytes", "max_msg_size", "max_inflight_request_bytes"}:
            return parse_size(raw)
        if name == "processes" and str(raw).strip().lower() == "auto":
            return os.cpu_count() or 1
        if kind == "int":
            if isinstance(raw, bool | float):
                raise ConfigError(f"not an integer: {raw!r}")
            return raw if isinstance(raw, int) else int(str(raw))
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text not in {"true", "false", "1", "0", "yes", "no"}:
                raise ConfigError(f"not a boolean: {raw!r}")
            return text in {"true", "1", "yes"}
        if name == "nats_url" and isinstance(raw, list | tuple):  # a TOML array of servers
            return ",".join(str(i).strip() for i in raw)
        if kind.startswith("tuple"):
            items = raw.split(",") if isinstance(raw, str) else raw
            if not isinstance(items, list | tuple):
                raise ConfigError(f"not a list: {raw!r}")
            return tuple(str(i).strip() for i in items if str(i).strip())
        if kind.startswith("Mapping"):
            if not isinstance(raw, dict):
                raise ConfigError(f"not a table: {raw!r}")
            return {str(k): str(v) for k, v in raw.items()}
        return str(raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _build(cls: type[Any], table: Mapping[str, Any], where: str) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(cls)} - set(_TABLES)
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    return {k: _coerce(cls, k, v, f"{where}.{k}") for k, v in table.items()}


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
    stream_overrides: Sequence[str] = (),
) -> GatewayConfig:
    """Read `path` (TOML), then apply `env` (`JETGATE_*`) and CLI `overrides`.

    `overrides` maps gateway setting names to raw values; `stream_overrides` holds
    `STREAM.field=value` items. Raises ConfigError naming the bad setting.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
    gateway_table = dict(data.get("gateway", {}))
    security = {t: gateway_table.pop(t, {}) for t in TABLES}
    if bad := [t for t, table in security.items() if not isinstance(table, dict)]:
        raise ConfigError(f"{path}: gateway.{bad[0]} must be a table ([gateway.{bad[0]}])")
    streams: dict[str, dict[str, Any]] = {}
    for index, table in enumerate(data.get("streams", [])):
        name = table.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{path}: streams[{index}] needs a name")
        if name in streams:
            raise ConfigError(f"{path}: stream {name!r} is declared twice")
        streams[name] = dict(table)
    unknown = sorted(set(data) - {"gateway", "streams", "routes", "groups"})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)}")

    env = env or {}
    for name in (*GATEWAY_SETTINGS, *SECURITY_SETTINGS):
        if (value := env.get(ENV_PREFIX + name.upper())) is not None:
            gateway_table[name] = value
    stream_items: list[tuple[str, str, str]] = []
    longest_first = sorted(streams, key=len, reverse=True)
    for var, value in sorted(env.items()):
        if var.startswith(STREAM_ENV_PREFIX):
            rest = var.removeprefix(STREAM_ENV_PREFIX)
            stream_name = next((n for n in longest_first if rest.startswith(n.upper() + "_")), None)
            if stream_name is None:
                raise ConfigError(f"{var}: no stream of that name in the config")
            stream_items.append((stream_name, rest[len(stream_name) + 1 :].lower(), value))
    for name, value in (overrides or {}).items():
        gateway_table[name] = value
    for name in SECURITY_SETTINGS:  # `tls_cert` -> security["tls"]["cert"]
        if name in gateway_table:
            table, _, setting = name.partition("_")
            security[table][setting] = gateway_table.pop(name)
    for item in stream_overrides:
        target, sep, value = item.partition("=")
        stream_name, dot, setting = target.partition(".")
        if not sep or not dot:
            raise ConfigError(f"--stream-set {item!r}: use STREAM.field=value")
        stream_items.append((stream_name, setting, value))
    for stream_name, setting, value in stream_items:
        if stream_name not in streams:
            raise ConfigError(f"stream override {stream_name}.{setting}: no such stream")
        streams[stream_name][setting] = value

    try:
        stream_configs = tuple(
            StreamConfig(**_build(StreamConfig, table, f"streams.{name}"))
            for name, table in streams.items()
        )
        routes = tuple(
            RouteConfig(**_build(RouteConfig, dict(r), f"routes[{i}]"))
            for i, r in enumerate(data.get("routes", []))
        )
        groups = tuple(
            GroupConfig(**_build(GroupConfig, dict(g), f"groups[{i}]"))
            for i, g in enumerate(data.get("groups", []))
        )
        return GatewayConfig(
            **_build(GatewayConfig, gateway_table, "gateway"),
            **{t: cls(**_build(cls, security[t], f"gateway.{t}")) for t, cls in TABLES.items()},
            streams=stream_configs,
            routes=routes,
            groups=groups,
        )
    except TypeError as exc:  # a required field is missing
        raise ConfigError(str(exc)) from None
