"""The group's durable JetStream consumer, created or updated when a worker sets up.

A consumer declared in the gateway's configuration (`[[groups]]`, metadata
`jetgate.declared`) belongs to the operator: a group of that name joins it only with the same
settings (filter subjects, ack_wait, max_deliver, backoff, max_ack_pending) and never changes
it; other settings are refused with every difference listed. The description and the handled
types are not settings: members of one group may handle different types (a gRPC subscriber
handles none). A consumer not declared follows the code: it is updated (with a warning).

What JetStream refuses (a filter that matches no subject of the stream, settings it does
not accept) is a GroupConfigError; what may pass (the stream not created yet, JetStream
starting or electing a leader, NATS away) is logged and reported as "try later".
"""

from __future__ import annotations

import contextlib
import logging

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from consumers import deadletter
from consumers.group import ConsumerGroup, GroupConfigError
from jetgate import wire

log = logging.getLogger("jetgate.consumers")


async def ensure(
    js: JetStreamContext, group: ConsumerGroup, wanted: ConsumerConfig | None = None
) -> bool:
    """Create or update `group`'s consumer (and the DLQ stream); False: try again later.

    `wanted`: the consumer to create or update to, `group.consumer_config()` unless given (a
    declared group's, with its declaration's description and marks: a declared consumer that
    an operator deleted comes back declared). Raises GroupConfigError when JetStream refuses
    the group's settings, or when the group is declared in the gateway's configuration with
    other settings (changing nothing).
    """
    try:
        stream = await js.stream_info(group.stream)
        await deadletter.ensure_stream(js, replicas=stream.config.num_replicas or 1)
        subjects = stream.config.subjects or []
        for subject_filter in group.filter_subjects:
            if not any(wire.subject_filter_covers(s, subject_filter) for s in subjects):
                raise GroupConfigError(
                    f"group {group.name!r}: filter {subject_filter!r} matches no subject of "
                    f"stream {group.stream} ({', '.join(subjects)})"
                )
        wanted = wanted or group.consumer_config()
        with contextlib.suppress(NotFoundError):
            current = (await js.consumer_info(group.stream, group.name)).config
            if is_declared(current):
                if differ := differences(current, wanted):
                    raise GroupConfigError(refusal(group.name, differ))
                # Join as it is: the declaration keeps its description and metadata.
                log.info(
                    "group %s: consumer ready on stream %s (declared by the gateway)",
                    group.name,
                    group.stream,
                )
                return True
            if changed := changes(current, wanted):
                # Expected after a deploy; a surprise when two modules share a name.
                log.warning("group %s: updating its consumer: %s", group.name, "; ".join(changed))
        await js.add_consumer(group.stream, wanted)
        log.info("group %s: consumer ready on stream %s", group.name, group.stream)
    except NotFoundError as exc:
        if exc.err_code != wire.JS_STREAM_NOT_FOUND:
            raise GroupConfigError(f"group {group.name!r}: {exc.description}") from exc
        log.warning("group %s: no stream %s yet", group.name, group.stream)
        return False
    except ServiceUnavailableError:
        return False  # JetStream starting or electing a leader
    except APIError as exc:
        raise GroupConfigError(f"group {group.name!r}: {exc.description}") from exc
    except (NatsError, TimeoutError) as exc:
        log.warning("group %s: JetStream not reachable (%r); retrying", group.name, exc)
        return False
    return True


def changes(current: ConsumerConfig, wanted: ConsumerConfig) -> tuple[str, ...]:
    """What updating consumer `current` to `wanted` changes, one "setting: current -> wanted"
    each: the group settings (`differences`), the description, the handled types and the
    declared mark."""
    changed = [f"{name}: {cur} -> {want}" for name, cur, want in differences(current, wanted)]
    if (current.description or "") != (wanted.description or ""):
        changed.append(f"description: {current.description or ''!r} -> {wanted.description!r}")
    have, want = current.metadata or {}, wanted.metadata or {}
    for key in (wire.EVENT_TYPES_METADATA, wire.DECLARED_METADATA):
        if have.get(key) != want.get(key):
            changed.append(f"{key}: {have.get(key, '(none)')} -> {want.get(key)}")
    return tuple(changed)


def is_declared(config: ConsumerConfig) -> bool:
    """Whether the consumer belongs to a group declared in the gateway's configuration."""
    return bool((config.metadata or {}).get(wire.DECLARED_METADATA))


def differences(current: ConsumerConfig, wanted: ConsumerConfig) -> list[tuple[str, str, str]]:
    """(setting, current, wanted) for each group setting (filter_subjects, ack_wait,
    max_deliver, backoff, max_ack_pending) in which two consumers of a group differ, as the
    group states them (max_deliver without the runtime's extra delivery). Description and
    handled types are not compared: members of a group may handle different types."""
    compared = (
        ("filter_subjects", _filters(current), _filters(wanted)),
        ("ack_wait", _ack_wait(current), _ack_wait(wanted)),
        ("max_deliver", _attempts(current), _attempts(wanted)),
        ("backoff", _backoff(current), _backoff(wanted)),
        ("max_ack_pending", str(current.max_ack_pending), str(wanted.max_ack_pending)),
    )
    return [(name, cur, want) for name, cur, want in compared if cur != want]


def refusal(group: str, differ: list[tuple[str, str, str]]) -> str:
    """Why a group differing from its declaration (`differences`) may not join it."""
    listed = ", ".join(
        f"{name} {declared} (declared) vs {here} (here)" for name, declared, here in differ
    )
    return (
        f"group {group} is declared by the gateway's configuration; this group differs: "
        f"{listed}. Use the declared settings, or change the declaration ([[groups]] in "
        "jetgate.toml) and restart the gateway"
    )


def _filters(config: ConsumerConfig) -> str:
    subjects = config.filter_subjects or ([config.filter_subject] if config.filter_subject else [])
    return "[" + ", ".join(sorted(subjects)) + "]" if subjects else "[] (the whole stream)"


def _ack_wait(config: ConsumerConfig) -> str:
    nanos = round((config.ack_wait or 0) * 1e9)  # exact: nats-py gives seconds as a float
    return f"{nanos / 1e9:.9g}s"


def _attempts(config: ConsumerConfig) -> str:
    """The group's max_deliver (the consumer allows one more: see consumers/group.py)."""
    value = config.max_deliver
    return str(value - 1) if value is not None and value > 0 else "unlimited"


def _backoff(config: ConsumerConfig) -> str:
    return (config.metadata or {}).get(wire.BACKOFF_METADATA, "-")
