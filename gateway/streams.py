"""Reconcile the streams declared in `jetgate.toml` with JetStream at gateway start-up.

`reconcile_streams` creates missing streams and applies safe changes to existing ones.
Every declared stream is planned before anything is changed: if any change is unsafe, it
raises `UnsafeStreamChange` listing all of them and changes nothing at all (not even the
safe fields). Streams on the server that are not declared are left alone.

Only fields jetgate manages are compared (name, subjects, storage, replicas, retention,
max_age, max_bytes, max_msgs, max_msg_size, duplicate_window, discard, allow_msg_ttl,
allow_atomic, description, metadata); server-filled fields and settings made with the
`nats` CLI that jetgate does not manage are kept as they are. Metadata keys starting with
`_nats.` belong to the server and are ignored. jetgate adds `jetgate.event_types`: the
comma-joined, sorted event types routed to the stream, so `nats stream info` explains itself
(it overrides a declared key of that name). Declared metadata replaces the stream's other
metadata: keys added with the `nats` CLI are removed (a safe change).

Safe (applied): description, metadata, duplicate_window, replicas (the server moves the
data; a single server refuses more than 1), adding subjects, raising a limit or making it
unlimited, allow_atomic on or off, allow_msg_ttl on, discard `old` -> `new` (at the limits
new publishes are refused instead of old messages deleted).

Unsafe (refused), because it destroys or orphans stored data or the server refuses it:
- storage type (the server cannot convert a stream);
- retention policy (e.g. limits -> interest deletes every message no consumer wants, at once;
  to/from workqueue the server refuses);
- lowering max_age, max_bytes, max_msgs or max_msg_size; unlimited (max_age 0, a size or
  count <= 0) -> any limit is a lowering (max_msg_size only rejects new publishes, but a
  client that could publish before would suddenly fail);
- removing a subject (its stored messages would no longer match the stream's subjects);
- allow_msg_ttl on -> off (the server refuses);
- discard `new` -> `old` (at the limits the oldest messages would be deleted).

A server refusal of a change judged safe here (e.g. replicas 3 on a single server, a
subject overlapping another stream) raises `StreamUpdateError` with the server's words;
streams before it in the list may already have been created or updated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from nats.js import JetStreamManager, api
from nats.js.errors import APIError, NotFoundError

from gateway.config import StreamConfig
from jetgate import wire
from jetgate.errors import StartupError

EVENT_TYPES_KEY: Final = wire.EVENT_TYPES_METADATA
SERVER_METADATA_PREFIX: Final = "_nats."

Action = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldChange:
    """One managed field whose stored value differs from the declared one (values as text)."""

    field: str
    current: str
    desired: str
    # Empty for a safe change; for an unsafe one, why and what the operator can do.
    problem: str = ""

    def __str__(self) -> str:
        text = f"{self.field}: {self.current} -> {self.desired}"
        return f"{text} ({self.problem})" if self.problem else text


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamChange:
    """What reconciliation did to one declared stream."""

    stream: str
    action: Action
    # The fields changed (for "updated"); empty for "created" and "unchanged".
    changes: tuple[FieldChange, ...] = ()

    def __str__(self) -> str:
        if not self.changes:
            return f"stream {self.stream}: {self.action}"
        return f"stream {self.stream}: {self.action}: " + "; ".join(map(str, self.changes))


class UnsafeStreamChange(StartupError, ValueError):
    """Declared stream settings would need unsafe changes; nothing was changed."""

    def __init__(self, unsafe: Mapping[str, Sequence[FieldChange]]) -> None:
        self.unsafe = {stream: tuple(changes) for stream, changes in unsafe.items()}
        lines = [
            "refusing to start: these stream changes could destroy or orphan stored events, "
            "so no stream was changed:"
        ]
        for stream, changes in self.unsafe.items():
            lines += [f"  stream {stream}: {change}" for change in changes]
        lines.append(
            "Set them back to the current values (jetgate.toml, JETGATE_STREAMS_* or "
            "--stream-set), or make the change yourself, knowing what it does to the data, "
            "with `nats stream edit <stream>` (or a new stream and a migration), then restart."
        )
        super().__init__("\n".join(lines))


class StreamUpdateError(StartupError, RuntimeError):
    """nats-server refused to create or update a stream; the message quotes it."""


async def reconcile_streams(
    jsm: JetStreamManager,
    streams: Sequence[StreamConfig],
    event_types: Mapping[str, Sequence[str]],
) -> list[StreamChange]:
    """Create missing streams and safely update changed ones; one StreamChange per stream.

    `event_types` maps a stream name to the full proto names routed to it (recorded in the
    stream's `jetgate.event_types` metadata). `jsm` may be a JetStreamContext. Raises
    UnsafeStreamChange (changing nothing) or StreamUpdateError (server refusal).
    """
    plans: list[tuple[api.StreamConfig, api.StreamConfig | None, tuple[FieldChange, ...]]] = []
    unsafe: dict[str, list[FieldChange]] = {}
    for config in streams:
        desired = to_nats_config(config, event_types.get(config.name, ()))
        try:
            current: api.StreamConfig | None = (await jsm.stream_info(config.name)).config
        except NotFoundError:
            current = None
        changes = diff_stream(current, desired) if current is not None else ()
        bad = [change for change in changes if change.problem]
        if bad:
            unsafe[config.name] = bad
        plans.append((desired, current, changes))
    if unsafe:
        raise UnsafeStreamChange(unsafe)

    result: list[StreamChange] = []
    for desired, current, changes in plans:
        name = str(desired.name)
        if current is None:
            refused = f"stream {name}: nats-server refused to create it"
            await _apply(jsm.add_stream(desired), refused)
            result.append(StreamChange(stream=name, action="created"))
        elif changes:
            # Keep what jetgate does not manage (e.g. compression set with the nats CLI).
            refused = f"stream {name}: nats-server refused " + "; ".join(map(str, changes))
            await _apply(jsm.update_stream(_with_managed(current, desired)), refused)
            result.append(StreamChange(stream=name, action="updated", changes=changes))
        else:
            result.append(StreamChange(stream=name, action="unchanged"))
    return result


def to_nats_config(config: StreamConfig, event_types: Sequence[str] = ()) -> api.StreamConfig:
    """The nats-py stream config for a declared stream (durations in seconds, as nats-py takes)."""
    metadata = dict(config.metadata)
    metadata[EVENT_TYPES_KEY] = ",".join(sorted(set(event_types)))
    return api.StreamConfig(
        name=config.name,
        description=config.description,
        subjects=list(config.subjects),
        storage=api.StorageType(config.storage),
        num_replicas=config.replicas,
        retention=api.RetentionPolicy(config.retention),
        max_age=config.max_age,
        max_bytes=config.max_bytes,
        max_msgs=config.max_msgs,
        max_msg_size=config.max_msg_size,
        duplicate_window=config.duplicate_window,
        discard=api.DiscardPolicy(config.discard),
        allow_msg_ttl=config.allow_msg_ttl,
        allow_atomic=config.allow_atomic,
        metadata=metadata,
    )


def diff_stream(current: api.StreamConfig, desired: api.StreamConfig) -> tuple[FieldChange, ...]:
    """The managed fields that differ; unsafe ones carry a `problem`. Pure: no I/O."""
    changes: list[FieldChange] = []

    def add(field: str, cur: str, want: str, problem: str = "") -> None:
        changes.append(FieldChange(field=field, current=cur, desired=want, problem=problem))

    if (current.description or "") != (desired.description or ""):
        add("description", repr(current.description or ""), repr(desired.description or ""))
    cur_meta, want_meta = _user_metadata(current), _user_metadata(desired)
    if cur_meta != want_meta:
        add("metadata", _fmt_map(cur_meta), _fmt_map(want_meta))

    cur_subjects, want_subjects = current.subjects or [], desired.subjects or []
    if set(cur_subjects) != set(want_subjects):
        removed = sorted(set(cur_subjects) - set(want_subjects))
        problem = (
            f"removes {', '.join(removed)}: stored events on them would be orphaned; keep "
            "them, or migrate or purge those events first"
            if removed
            else ""
        )
        add("subjects", ", ".join(cur_subjects), ", ".join(want_subjects), problem)

    for field, cur, want, problem in (
        ("storage", current.storage, desired.storage, "the server cannot convert a stream"),
        (
            "retention",
            current.retention,
            desired.retention,
            "may delete stored events at once (limits -> interest) or be refused by the server",
        ),
    ):
        if _text(cur) != _text(want):
            add(field, _text(cur), _text(want), f"{problem}; create a new stream and migrate")

    if (current.num_replicas or 1) != (desired.num_replicas or 1):
        add("replicas", str(current.num_replicas or 1), str(desired.num_replicas or 1))

    cur_discard, want_discard = _text(current.discard or "old"), _text(desired.discard or "old")
    if cur_discard != want_discard:
        problem = (
            "at the limits the oldest events would be deleted" if want_discard == "old" else ""
        )
        add("discard", cur_discard, want_discard, problem)

    for field, parse, fmt in (
        ("max_age", _age_limit, _fmt_age),
        ("max_bytes", _size_limit, _fmt_size),
        ("max_msgs", _size_limit, _fmt_size),
        ("max_msg_size", _size_limit, _fmt_size),
    ):
        cur_limit, want_limit = parse(getattr(current, field)), parse(getattr(desired, field))
        if cur_limit != want_limit:
            lowered = want_limit is not None and (cur_limit is None or want_limit < cur_limit)
            problem = ""
            if lowered:
                problem = (
                    "publishes accepted before would be refused"
                    if field == "max_msg_size"
                    else "lowering a limit deletes stored events beyond it"
                )
            add(field, fmt(cur_limit), fmt(want_limit), problem)

    cur_dup, want_dup = current.duplicate_window or 0.0, desired.duplicate_window or 0.0
    if abs(cur_dup - want_dup) > 1e-6:
        add("duplicate_window", f"{cur_dup:g}s", f"{want_dup:g}s")

    cur_ttl, want_ttl = bool(current.allow_msg_ttl), bool(desired.allow_msg_ttl)
    if cur_ttl != want_ttl:
        problem = "the server cannot turn per-message TTL off; keep it on" if cur_ttl else ""
        add("allow_msg_ttl", str(cur_ttl).lower(), str(want_ttl).lower(), problem)

    cur_atomic, want_atomic = bool(current.allow_atomic), bool(desired.allow_atomic)
    if cur_atomic != want_atomic:
        add("allow_atomic", str(cur_atomic).lower(), str(want_atomic).lower())
    return tuple(changes)


def _with_managed(current: api.StreamConfig, desired: api.StreamConfig) -> api.StreamConfig:
    """`current` with every managed field taken from `desired`; the rest stays as stored."""
    return dataclasses.replace(
        current,
        description=desired.description,
        subjects=desired.subjects,
        storage=desired.storage,
        num_replicas=desired.num_replicas,
        retention=desired.retention,
        max_age=desired.max_age,
        max_bytes=desired.max_bytes,
        max_msgs=desired.max_msgs,
        max_msg_size=desired.max_msg_size,
        duplicate_window=desired.duplicate_window,
        discard=desired.discard,
        allow_msg_ttl=desired.allow_msg_ttl,
        allow_atomic=desired.allow_atomic,
        metadata=desired.metadata,
    )


async def _apply(request: Awaitable[api.StreamInfo], what: str) -> None:
    try:
        await request
    except APIError as exc:
        raise StreamUpdateError(f"{what}: {exc.description} (err_code {exc.err_code})") from exc


def _user_metadata(config: api.StreamConfig) -> dict[str, str]:
    return {
        k: v for k, v in (config.metadata or {}).items() if not k.startswith(SERVER_METADATA_PREFIX)
    }


def _age_limit(seconds: float | None) -> int | None:
    """Nanoseconds, None = forever (0)."""
    return round(seconds * 1e9) if seconds and seconds > 0 else None


def _size_limit(value: int | None) -> int | None:
    """None = unlimited (the server stores 0 and below as -1)."""
    return value if value is not None and value > 0 else None


def _fmt_age(nanos: int | None) -> str:
    return "forever" if nanos is None else f"{nanos / 1e9:g}s"


def _fmt_size(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


def _fmt_map(mapping: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{k}={v!r}" for k, v in sorted(mapping.items())) + "}"


def _text(value: object) -> str:
    """An enum member's value, or the string itself (the server returns plain strings)."""
    return str(getattr(value, "value", value))
