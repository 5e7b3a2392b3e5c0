"""Consumer groups declared by the operator (`[[groups]]` in jetgate.toml).

Only declared groups are open to `Subscribe`: a gRPC client names a group, it never sets
its settings. Each declaration is a `consumers.ConsumerGroup` (the same runtime the
Python workers use), its consumer created or updated at start-up like the streams.

```toml
[[groups]]
name = "audit"
stream = "ORDERS"
filter_subjects = ["orders.>"]   # empty: the whole stream
event_types = ["shop.v1.*"]      # globs of the types its members may receive; empty: every
                                 # type routed to the stream. Others are dead-lettered
                                 # (unknown-type).
max_deliver = 5
backoff = ["1s", "5s", "30s"]
ack_wait = "30s"
max_ack_pending = 1000
```

`reconcile_groups` runs at start-up after the streams (and again on a new NATS connection):
it creates each declared group's durable consumer or updates it to the declaration, and
marks it `jetgate.declared = "config"` with the declared type globs in
`jetgate.event_types` ("*": every type), so `nats consumer info` explains itself. Every
filter is checked against its stream's subjects before anything is changed. The
declaration wins over whatever made the consumer before (a Python group, the `nats` CLI):
the settings jetgate manages are set to the declared ones, others (e.g. replicas set with
`nats consumer edit`) are kept, and so is metadata not under `jetgate.`. A consumer not
declared (any more) is left alone: removing a declaration never deletes a group's position.
The dead-letter stream is made when a member joins (`consumers.consumer.ensure`), as for any
group: creating it here would surprise whoever manages it.

A refused declaration (a filter that matches no subject of its stream, a change the server
refuses such as another deliver policy) is a GroupDeclarationError, a configuration error:
the gateway does not start (exit code 2). Groups before it may already have been changed.

The declaration belongs to the operator: `consumers.consumer.ensure` refuses a Python group
(or the gateway's Subscribe) whose settings differ from it, listing the differences.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from consumers import consumer
from consumers.group import ConsumerGroup
from jetgate import wire
from jetgate.errors import ConfigurationError

Action = Literal["created", "updated", "unchanged"]
# The consumer metadata a declaration writes (group.py writes the first two for every group).
_OURS = (
    wire.MAX_DELIVER_METADATA,
    wire.BACKOFF_METADATA,
    wire.EVENT_TYPES_METADATA,
    wire.DECLARED_METADATA,
)
_SERVER_METADATA_PREFIX = "_nats."


class GroupDeclarationError(ConfigurationError, ValueError):
    """A `[[groups]]` entry is invalid; the message names the group."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupConfig:
    """One declared consumer group (see the module docstring); durations in seconds."""

    name: str
    stream: str
    filter_subjects: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    max_deliver: int = 5
    backoff: tuple[float, ...] = (1.0, 5.0, 30.0)
    ack_wait: float = 30.0
    max_ack_pending: int = 1000
    description: str = ""

    def __post_init__(self) -> None:
        try:
            self.consumer_group()
        except ValueError as exc:
            raise GroupDeclarationError(f"groups.{self.name}: {exc}") from None

    def consumer_group(self) -> ConsumerGroup:
        """The group's runtime settings, with no handlers registered."""
        return ConsumerGroup(
            self.name,
            stream=self.stream,
            filter_subjects=self.filter_subjects,
            max_deliver=self.max_deliver,
            backoff=self.backoff,
            ack_wait=self.ack_wait,
            max_ack_pending=self.max_ack_pending,
            description=self.description,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupChange:
    """What reconciliation did to one declared group's consumer."""

    group: str
    stream: str
    action: Action
    # "setting: current -> declared", for "updated".
    changes: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = f"group {self.group} on stream {self.stream}: {self.action}"
        return f"{text}: " + "; ".join(self.changes) if self.changes else text


async def reconcile_groups(
    js: JetStreamContext, groups: Sequence[GroupConfig]
) -> list[GroupChange]:
    """Create or update the consumer of each declared group; one GroupChange per group.

    Raises GroupDeclarationError when a filter matches no subject of its stream (before
    changing anything) or nats-server refuses a consumer (quoting it).
    """
    for group in groups:
        try:
            stream = (await js.stream_info(group.stream)).config
        except NotFoundError:
            raise GroupDeclarationError(
                f"groups.{group.name}: no stream {group.stream} on the server"
            ) from None
        subjects = stream.subjects or []
        for subject_filter in group.filter_subjects:
            if not any(wire.subject_filter_covers(s, subject_filter) for s in subjects):
                raise GroupDeclarationError(
                    f"groups.{group.name}: filter {subject_filter!r} matches no subject of "
                    f"stream {group.stream} ({', '.join(subjects)})"
                )

    result = []
    for group in groups:
        desired = declared_consumer_config(group)
        try:
            current: ConsumerConfig | None = (
                await js.consumer_info(group.stream, group.name)
            ).config
        except NotFoundError:
            current = None
        if current is None:
            await _apply(js, group, desired)
            result.append(GroupChange(group=group.name, stream=group.stream, action="created"))
            continue
        changes = diff_group(current, desired)
        if changes:
            await _apply(js, group, _with_managed(current, desired))
        result.append(
            GroupChange(
                group=group.name,
                stream=group.stream,
                action="updated" if changes else "unchanged",
                changes=changes,
            )
        )
    return result


def declared_consumer_config(group: GroupConfig) -> ConsumerConfig:
    """The consumer of a declared group: its runtime's, marked as declared (module docstring)."""
    config = group.consumer_group().consumer_config()
    globs = ",".join(group.event_types) or "*"
    return dataclasses.replace(
        config,
        description=group.description
        or f"jetgate consumer group {group.name}, declared in the gateway's configuration",
        metadata={
            **(config.metadata or {}),
            wire.EVENT_TYPES_METADATA: globs,
            wire.DECLARED_METADATA: wire.DECLARED_BY_CONFIG,
        },
    )


def diff_group(current: ConsumerConfig, desired: ConsumerConfig) -> tuple[str, ...]:
    """The managed settings that differ, as "setting: current -> declared". Pure: no I/O."""
    changes = list(consumer.changes(current, desired))
    for name in ("deliver_policy", "ack_policy"):
        cur_value, want_value = getattr(current, name), getattr(desired, name)
        if _text(cur_value) != _text(want_value):
            changes.append(f"{name}: {_text(cur_value)} -> {_text(want_value)}")
    return tuple(changes)


def _with_managed(current: ConsumerConfig, desired: ConsumerConfig) -> ConsumerConfig:
    """`current` with the settings jetgate manages taken from `desired`; the rest as stored."""
    kept = {
        k: v
        for k, v in (current.metadata or {}).items()
        if not k.startswith(("jetgate.", _SERVER_METADATA_PREFIX))
    }
    return dataclasses.replace(
        current,
        description=desired.description,
        deliver_policy=desired.deliver_policy,
        ack_policy=desired.ack_policy,
        ack_wait=desired.ack_wait,
        max_deliver=desired.max_deliver,
        max_ack_pending=desired.max_ack_pending,
        filter_subject=desired.filter_subject,
        filter_subjects=desired.filter_subjects,
        metadata={**kept, **{k: v for k, v in (desired.metadata or {}).items() if k in _OURS}},
    )


async def _apply(js: JetStreamContext, group: GroupConfig, config: ConsumerConfig) -> None:
    try:
        await js.add_consumer(group.stream, config)
    except ServiceUnavailableError:
        raise  # JetStream starting: the connection's preparation is retried
    except APIError as exc:
        raise GroupDeclarationError(
            f"groups.{group.name}: nats-server refused its consumer on stream {group.stream}: "
            f"{exc.description} (err_code {exc.err_code})"
        ) from exc


def _text(value: object) -> str:
    """An enum member's value, or the string itself (the server returns plain strings)."""
    return str(getattr(value, "value", value))
