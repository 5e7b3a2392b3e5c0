"""Dead letters: events a consumer group gave up on, kept in their own stream.

A dead letter is stored in stream `DLQ` (subjects `dlq.>`) on `dlq.<group>.<origin
subject>`, with the original payload and every original header except JetStream's own
(`Nats-*`: the id, TTL and preconditions of the original publish, which would be wrong
here), plus `Jetgate-Origin-Stream/-Subject/-Sequence`, `Jetgate-Group`,
`Jetgate-Attempts`, `Jetgate-Reason`, `Jetgate-Error` and `Jetgate-Dead-At`.
Its `Nats-Msg-Id` names group, stream and sequence, so storing it twice (a worker died
between storing it and terminating the original) keeps one copy.

`redrive` republishes a dead letter to its origin subject with the same payload and event
id, marked for its group only (`Jetgate-Redrive-Group`: workers of other groups
acknowledge it without handling it), then deletes the dead letter. `purge` deletes them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from jetgate import wire

DEAD_LETTER_DUPLICATE_WINDOW = 120.0  # s


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """One stored dead letter, as `jetgate dlq list` shows it."""

    sequence: int
    group: str
    origin_stream: str
    origin_subject: str
    origin_sequence: int
    event_id: str
    event_type: str
    reason: str
    error: str
    attempts: int
    time: datetime
    payload: bytes = field(repr=False)
    headers: Mapping[str, str] = field(repr=False)


async def ensure_stream(js: JetStreamContext, name: str = wire.DEAD_LETTER_STREAM) -> None:
    """Create the dead-letter stream unless it exists (an existing one is left as it is)."""
    try:
        await js.stream_info(name)
    except NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=name,
                subjects=[f"{wire.DEAD_LETTER_PREFIX}.>"],
                storage=StorageType.FILE,
                duplicate_window=DEAD_LETTER_DUPLICATE_WINDOW,
                description="jetgate dead letters: dlq.<group>.<origin subject>",
            )
        )


def dead_letter_headers(
    headers: Mapping[str, str],
    *,
    stream: str,
    subject: str,
    sequence: int,
    group: str,
    attempts: int,
    reason: str,
    error: str,
) -> dict[str, str]:
    """The headers of the dead letter of the event stored with `headers` (a fresh dict)."""
    kept = {k: v for k, v in headers.items() if not k.lower().startswith(wire.DEAD_LETTER_DROPS)}
    kept.update(
        {
            wire.MSG_ID: wire.dead_letter_msg_id(group, stream, sequence),
            wire.ORIGIN_STREAM: stream,
            wire.ORIGIN_SUBJECT: subject,
            wire.ORIGIN_SEQUENCE: str(sequence),
            wire.DEAD_GROUP: group,
            wire.DEAD_ATTEMPTS: str(attempts),
            wire.DEAD_REASON: reason,
            wire.DEAD_ERROR: wire.header_text(error),
            wire.DEAD_TIME: wire.format_time(datetime.now(UTC)),
        }
    )
    return kept


def redrive_headers(dead: DeadLetter) -> dict[str, str]:
    """The headers of the redriven event: the original ones, marked for `dead.group`."""
    kept = {k: v for k, v in dead.headers.items() if not k.lower().startswith(wire.REDRIVE_DROPS)}
    kept[wire.MSG_ID] = wire.redrive_msg_id(dead.event_id, dead.sequence)
    kept[wire.REDRIVE_GROUP] = dead.group
    return kept


async def dead_letters(
    js: JetStreamContext, group: str, *, stream: str = wire.DEAD_LETTER_STREAM
) -> AsyncIterator[DeadLetter]:
    """Every dead letter of `group` stored when the walk began, oldest first.

    Raises NotFoundError when there is no dead-letter stream (no worker has started).
    Dead letters stored during the walk are not included: a redriven event that fails
    again is not redriven twice by one `redrive`.
    """
    last = (await js.stream_info(stream)).state.last_seq
    sequence = 1
    while sequence <= last:
        try:
            raw = await js.get_msg(
                stream, seq=sequence, subject=wire.dead_letter_filter(group), next=True
            )
        except NotFoundError:
            return
        assert raw.seq is not None
        if raw.seq > last:
            return
        headers: dict[str, str] = dict(raw.headers or {})
        yield DeadLetter(
            sequence=raw.seq,
            group=headers.get(wire.DEAD_GROUP, group),
            origin_stream=headers.get(wire.ORIGIN_STREAM, ""),
            origin_subject=headers.get(wire.ORIGIN_SUBJECT, ""),
            origin_sequence=_int(headers.get(wire.ORIGIN_SEQUENCE)),
            event_id=headers.get(wire.CE_ID, ""),
            event_type=headers.get(wire.CE_TYPE, ""),
            reason=headers.get(wire.DEAD_REASON, ""),
            error=headers.get(wire.DEAD_ERROR, ""),
            attempts=_int(headers.get(wire.DEAD_ATTEMPTS)),
            time=raw.time or datetime.fromtimestamp(0, UTC),
            payload=raw.data or b"",
            headers=headers,
        )
        sequence = raw.seq + 1


async def redrive(
    js: JetStreamContext, group: str, *, stream: str = wire.DEAD_LETTER_STREAM
) -> list[DeadLetter]:
    """Republish every dead letter of `group` to its origin subject, then delete it.

    A dead letter whose republish fails stays where it is (the error propagates); those
    before it are redriven already. Running it again is safe: a republish that reached the
    origin stream before is de-duplicated by its `Nats-Msg-Id`.
    """
    done: list[DeadLetter] = []
    async for dead in dead_letters(js, group, stream=stream):
        if not dead.origin_subject:
            continue
        await js.publish(dead.origin_subject, dead.payload, headers=redrive_headers(dead))
        await js.delete_msg(stream, dead.sequence)
        done.append(dead)
    return done


async def purge(js: JetStreamContext, group: str, *, stream: str = wire.DEAD_LETTER_STREAM) -> int:
    """Delete every dead letter of `group`; returns how many there were."""
    info = await js.stream_info(stream, subjects_filter=wire.dead_letter_filter(group))
    count = sum((info.state.subjects or {}).values())
    await js.purge_stream(stream, subject=wire.dead_letter_filter(group))
    return count


def _int(text: str | None) -> int:
    return int(text) if text and text.isdigit() else 0
