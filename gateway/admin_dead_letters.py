"""Admin dead letters: `consumers.deadletter` (the implementation `jetgate dlq` uses too)
answered as `jetgate.v1` messages.

ListDeadLetters lists at most `limit` (0: DEFAULT_LIMIT; more than MAX_LIMIT: MAX_LIMIT),
oldest first, with `total`, all the group has. Redrive and purge act on all of them.
Without a dead-letter stream (no worker has started) a known group has none.
"""

from __future__ import annotations

from nats.js import JetStreamContext

from consumers import deadletter
from jetgate.v1 import admin_pb2

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def effective_limit(requested: int) -> int:
    """How many ListDeadLetters lists for the `limit` requested."""
    return min(requested or DEFAULT_LIMIT, MAX_LIMIT)


async def list_dead_letters(
    js: JetStreamContext, group: str, limit: int
) -> admin_pb2.ListDeadLettersResponse:
    """The first `limit` dead letters of `group` (see `effective_limit`), and how many it has."""
    listed = [
        dead_letter_message(dead)
        async for dead in deadletter.dead_letters(js, group, limit=effective_limit(limit))
    ]
    total = await deadletter.count(js, group)
    # Dead letters stored between the walk and the count; never fewer than those shown.
    return admin_pb2.ListDeadLettersResponse(dead_letters=listed, total=max(total, len(listed)))


async def redrive_dead_letters(
    js: JetStreamContext, group: str, *, max_payload: int
) -> admin_pb2.RedriveDeadLettersResponse:
    """Redrive every dead letter of `group` (`max_payload`: the server's); those kept come
    back with why."""
    refused: list[admin_pb2.RedriveRefusal] = []

    def refuse(dead: deadletter.DeadLetter, reason: str) -> None:
        refused.append(admin_pb2.RedriveRefusal(sequence=dead.sequence, reason=reason))

    done = await deadletter.redrive(js, group, max_payload=max_payload, refused=refuse)
    return admin_pb2.RedriveDeadLettersResponse(redriven=len(done), refused=refused)


async def purge_dead_letters(
    js: JetStreamContext, group: str
) -> admin_pb2.PurgeDeadLettersResponse:
    """Delete every dead letter of `group`."""
    return admin_pb2.PurgeDeadLettersResponse(purged=await deadletter.purge(js, group))


def dead_letter_message(dead: deadletter.DeadLetter) -> admin_pb2.DeadLetter:
    """The `jetgate.v1.DeadLetter` of a stored dead letter (`size`: its event's payload)."""
    message = admin_pb2.DeadLetter(
        sequence=dead.sequence,
        group=dead.group,
        origin_stream=dead.origin_stream,
        origin_subject=dead.origin_subject,
        origin_sequence=dead.origin_sequence,
        event_id=dead.event_id,
        event_type=dead.event_type,
        reason=dead.reason,
        error=dead.error,
        attempts=dead.attempts,
        size=dead.original_size,
        truncated=dead.truncated,
    )
    message.time.FromDatetime(dead.time)
    return message
