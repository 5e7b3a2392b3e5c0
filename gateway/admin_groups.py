"""Admin groups: the consumer groups on the streams the gateway manages, as JetStream
reports them.

A group is a durable consumer of a configured stream (`consumers.group`: consumer name =
group name); ephemeral consumers (ordered readers, `nats sub`) are not groups and are not
listed. Groups declared in the configuration (`[[groups]]`, gateway/groups.py) are
`declared` (open to Subscribe); Python groups, and durables made by other tools, are
listed too. A declared group whose consumer does not exist (yet) is not listed: every
figure of a group is its consumer's.

Settings are the group's, not the consumer's where they differ (see consumers/group.py):
`max_deliver` and `backoff` come from the consumer's metadata (`jetgate.max_deliver`,
`jetgate.backoff`; the consumer's own max_deliver is one more, and it has no backoff),
falling back to the consumer's own settings for a consumer jetgate did not make. The
event types are the metadata's `jetgate.event_types`: the types a Python group handles, or
for a declared group's consumer (`jetgate.declared`) type globs, answered as the types
routed to its stream that they admit (`*`: every routed type). A declaration of this
gateway not (yet) written into its consumer's metadata is read the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from google.protobuf import duration_pb2
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError

from gateway.groups import GroupConfig
from jetgate import wire
from jetgate.v1 import admin_pb2

# nats-server answers a consumer list with at most this many (JSApiListLimit).
CONSUMER_PAGE = 256

Members = Callable[[str], int]


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupContext:
    """What the gateway knows of groups beyond JetStream: declarations, routes, members."""

    declared: Mapping[tuple[str, str], GroupConfig]  # (stream, group name) -> declaration
    routed: Mapping[str, Sequence[str]]  # stream -> event types routed to it
    members: Members

    @classmethod
    def of(
        cls,
        groups: Sequence[GroupConfig],
        routed: Mapping[str, Sequence[str]],
        members: Members,
    ) -> GroupContext:
        """The context of the declared `groups`, the `routed` types and `members`."""
        return cls(declared={(g.stream, g.name): g for g in groups}, routed=routed, members=members)

    def declaration(self, name: str) -> GroupConfig | None:
        """The declaration of the group `name` (names of declared groups are unique)."""
        return next((g for (_, n), g in self.declared.items() if n == name), None)


async def durable_consumers(js: JetStreamContext, stream: str) -> list[ConsumerInfo]:
    """Every durable consumer of `stream`, by name (empty when the stream does not exist)."""
    found: list[ConsumerInfo] = []
    while True:
        try:
            page = await js.consumers_info(stream, offset=len(found))
        except NotFoundError:
            break
        found.extend(page)
        if len(page) < CONSUMER_PAGE:
            break
    return sorted((c for c in found if c.config.durable_name), key=lambda c: c.name)


async def durable_consumer(js: JetStreamContext, stream: str, name: str) -> ConsumerInfo | None:
    """The durable consumer `name` of `stream`; None when there is none (or no stream)."""
    try:
        info = await js.consumer_info(stream, name)
    except NotFoundError:
        return None
    return info if info.config.durable_name else None


def group_message(
    info: ConsumerInfo, context: GroupContext, *, dead_letters: int
) -> admin_pb2.GroupInfo:
    """The Admin `GroupInfo` of the consumer `info` (see the module docstring)."""
    config = info.config
    metadata = config.metadata or {}
    declared = context.declared.get((info.stream_name, info.name))
    filters = list(
        config.filter_subjects or ([config.filter_subject] if config.filter_subject else [])
    )
    message = admin_pb2.GroupInfo(
        name=info.name,
        stream=info.stream_name,
        filter_subjects=filters,
        pending=info.num_pending or 0,
        ack_pending=info.num_ack_pending or 0,
        redelivered=info.num_redelivered or 0,
        waiting_pulls=info.num_waiting or 0,
        last_delivered_sequence=info.delivered.stream_seq if info.delivered else 0,
        members_connected=context.members(info.name),
        declared=declared is not None,
        max_deliver=_max_deliver(metadata, config.max_deliver),
        backoff=[_duration(s) for s in _backoff(metadata, config.backoff)],
        max_ack_pending=max(config.max_ack_pending or 0, 0),
        dead_letters=dead_letters,
        event_types=_event_types(metadata, declared, context.routed.get(info.stream_name, ())),
    )
    if config.ack_wait:
        message.ack_wait.CopyFrom(_duration(config.ack_wait))
    if info.delivered is not None and info.delivered.last_active is not None:
        message.last_active.FromDatetime(info.delivered.last_active)
    return message


def _max_deliver(metadata: Mapping[str, str], consumer_max_deliver: int | None) -> int:
    text = metadata.get(wire.MAX_DELIVER_METADATA, "")
    if text.isdigit():
        return int(text)
    return max(consumer_max_deliver or 0, 0)  # -1: unlimited, shown as 0


def _backoff(metadata: Mapping[str, str], consumer_backoff: Sequence[float] | None) -> list[float]:
    text = metadata.get(wire.BACKOFF_METADATA)
    if text is None:
        return list(consumer_backoff or ())
    delays: list[float] = []
    for item in text.split(","):
        try:
            delays.append(float(item.strip().removesuffix("s")))
        except ValueError:  # "-" (no backoff), or written by someone else
            continue
    return delays


def _event_types(
    metadata: Mapping[str, str], declared: GroupConfig | None, routed: Sequence[str]
) -> list[str]:
    listed = [t for t in metadata.get(wire.EVENT_TYPES_METADATA, "").split(",") if t and t != "-"]
    if metadata.get(wire.DECLARED_METADATA):
        globs = listed
    elif declared is not None and not listed:
        globs = list(declared.event_types) or ["*"]
    else:
        return listed
    return [t for t in routed if any(fnmatchcase(t, glob) for glob in globs)]


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration
