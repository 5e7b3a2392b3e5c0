"""The group's durable JetStream consumer, created or updated when a worker sets up.

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


async def ensure(js: JetStreamContext, group: ConsumerGroup) -> bool:
    """Create or update `group`'s consumer (and the DLQ stream); False: try again later.

    Raises GroupConfigError when JetStream refuses the group's settings.
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
        wanted = group.consumer_config()
        with contextlib.suppress(NotFoundError):
            current = (await js.consumer_info(group.stream, group.name)).config
            if changed := changes(current, wanted):
                # Expected after a deploy; a surprise when two modules share a name.
                log.warning("group %s: updating its consumer: %s", group.name, changed)
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


def changes(current: ConsumerConfig, wanted: ConsumerConfig) -> str:
    """What updating consumer `current` to `wanted` changes (the settings a group sets)."""
    fields = ("filter_subjects", "ack_wait", "max_deliver", "max_ack_pending", "description")
    changed = [
        f"{name} {getattr(current, name)!r} -> {getattr(wanted, name)!r}"
        for name in fields
        if getattr(current, name) != getattr(wanted, name)
    ]
    ours = {k: v for k, v in (current.metadata or {}).items() if k.startswith("jetgate.")}
    if ours != wanted.metadata:
        changed.append(f"metadata {ours!r} -> {wanted.metadata!r}")
    return "; ".join(changed)
