"""Dead letters: events a consumer group gave up on, kept in their own stream.

A dead letter is stored in stream `DLQ` (subjects `dlq.>`) on `dlq.<group>.<origin
subject>`, with the original payload and every original header except JetStream's own
(`Nats-*`: the id, TTL and preconditions of the original publish, which would be wrong
here), plus `Jetgate-Origin-Stream/-Subject/-Sequence`, `Jetgate-Group`,
`Jetgate-Attempts`, `Jetgate-Reason`, `Jetgate-Error` and `Jetgate-Dead-At`.
Its `Nats-Msg-Id` names group, stream and sequence, so storing it twice (a worker died
between storing it and terminating the original) keeps one copy.

A dead letter always fits the server's `max_payload` (a bigger one would make nats-server
close the worker's connection). The headers above take up to about 1.5 KiB, so an event
near the limit does not fit whole: then the dead letter keeps as much of the payload as
fits (a truncated copy, for inspection) and `Jetgate-Truncated: <original payload bytes>`;
if even its headers do not fit (only possible for messages not published by the gateway,
which bounds headers at 64 KiB), it keeps the original's CloudEvents headers only, or none
(`Jetgate-Dropped-Headers: <count>`). Origin stream and sequence are the reference to the
whole event. (The limit is the connection's `max_payload`; the DLQ stream jetgate creates
sets no smaller `max_msg_size`: an operator who sets one gets failed stores, held and
retried, see `consumers.handling`.)

Every `ce-*` header is kept, so the CloudEvents extension attributes of an event a
CloudEvents SDK published (`ce-tenant`) survive the dead letter and its redrive.

`redrive` republishes a dead letter to its origin subject with the same payload and event
id, marked for its group only (`Jetgate-Redrive-Group`: workers of other groups
acknowledge it without handling it), then deletes the dead letter. A truncated dead
letter is never republished as it is (that would be a corrupt event): redrive re-reads the
original from its origin stream by sequence and republishes that; when the original is
gone (limits, deleted), or the redriven event would exceed `max_payload`, that dead letter
is refused with the reason and stays, and redrive goes on with the next. `purge` deletes
them. A `progress` callback of `redrive` hears how far it is after each dead letter (how
many there were at the start, how many are done, redriven, refused), so that a CLI can
show it; the redrive loop itself prints nothing.

These operations are the one implementation behind both `jetgate dlq list|redrive|purge`
(consumers/cli.py, which only prints) and the gateway's Admin service (gateway/admin.py,
which only answers): `dead_letters` (with a `limit`), `count`, `redrive` (refusals
reported to a callback, the caller decides how to show them) and `purge`. Before any
worker has dead-lettered, the dead-letter stream does not exist: every operation then
finds nothing (no dead letters, count 0, nothing redriven or purged) rather than failing;
`exists` tells the two apart for a caller that wants to say so.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from consumers.headers import text_headers
from jetgate import wire

log = logging.getLogger("jetgate.consumers")

DEAD_LETTER_DUPLICATE_WINDOW = 120.0  # s
# `count`'s consumer is deleted at once; this is the backstop when the deletion fails (s).
COUNTER_INACTIVE_THRESHOLD = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """One stored dead letter, as `jetgate dlq list` shows it.

    `original_size` is the payload size of the event; larger than `len(payload)` when the
    dead letter holds a truncated copy (`truncated`).
    """

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
    original_size: int = 0

    @property
    def truncated(self) -> bool:
        """Whether this dead letter lacks part of its event (payload or headers)."""
        return wire.DEAD_TRUNCATED in self.headers or wire.DEAD_DROPPED_HEADERS in self.headers


class RedriveRefused(Exception):
    """A dead letter that cannot be redriven as it is; the message says why."""


Refusal = Callable[[DeadLetter, str], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class RedriveProgress:
    """How far a `redrive` is: `done` of `total` dead letters (those of the group when it
    began), of which `redriven` were republished and `refused` kept."""

    total: int
    done: int = 0
    redriven: int = 0
    refused: int = 0


ProgressCallback = Callable[[RedriveProgress], None]


async def ensure_stream(
    js: JetStreamContext, name: str = wire.DEAD_LETTER_STREAM, *, replicas: int = 1
) -> None:
    """Create the dead-letter stream unless it exists (an existing one is left as it is).

    `replicas`: those of the stream the dead letters come from (a worker passes its group's
    stream's): in a cluster an R1 DLQ lives on one node, and while that node is down every
    worker's setup waits on it, so the whole pipeline stops although its stream is R3.
    """
    try:
        await js.stream_info(name)
    except NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=name,
                subjects=[f"{wire.DEAD_LETTER_PREFIX}.>"],
                storage=StorageType.FILE,
                num_replicas=replicas,
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


def fit(
    payload: bytes, headers: Mapping[str, str], *, max_payload: int
) -> tuple[bytes, dict[str, str]]:
    """The dead letter (`payload`, `headers` from `dead_letter_headers`) cut to fit
    `max_payload` bytes of headers and payload (see the module docstring); fresh values."""
    full = dict(headers)
    if wire.encoded_headers_size(full) + len(payload) <= max_payload:
        return payload, full
    ours = {k: v for k, v in full.items() if _is_ours(k)}
    originals = {k: v for k, v in full.items() if not _is_ours(k)}
    ours[wire.DEAD_TRUNCATED] = str(len(payload))
    choices = [
        originals,
        {
            k: v
            for k, v in originals.items()
            if k.lower().startswith(wire.DEAD_LETTER_KEEPS_WHEN_SHORT)
        },
        {},
    ]
    for kept in choices:
        marks = dict(ours)
        if len(kept) < len(originals):
            marks[wire.DEAD_DROPPED_HEADERS] = str(len(originals) - len(kept))
        candidate = {**kept, **marks}
        room = max_payload - wire.encoded_headers_size(candidate)
        if room >= 0:
            return payload[:room], candidate
    # Only a tiny max_payload gets here: the shortest error text still says what happened.
    marks[wire.DEAD_ERROR] = "-"
    return b"", marks


def _is_ours(name: str) -> bool:
    return name == wire.MSG_ID or name.lower().startswith(wire.DEAD_LETTER_HEADER_PREFIX)


def redrive_headers(dead: DeadLetter) -> dict[str, str]:
    """The headers of the redriven event: the original ones, marked for `dead.group`."""
    return _redriven(dead.headers, dead)


def _redriven(headers: Mapping[str, str], dead: DeadLetter) -> dict[str, str]:
    kept = {
        k: v
        for k, v in headers.items()
        if k.lower() in wire.REDRIVE_KEEPS or not k.lower().startswith(wire.REDRIVE_DROPS)
    }
    kept[wire.MSG_ID] = wire.redrive_msg_id(dead.event_id, dead.sequence)
    kept[wire.REDRIVE_GROUP] = dead.group
    return kept


async def exists(js: JetStreamContext, stream: str = wire.DEAD_LETTER_STREAM) -> bool:
    """Whether the dead-letter stream exists (it does once a worker has started)."""
    try:
        await js.stream_info(stream)
    except NotFoundError:
        return False
    return True


async def dead_letters(
    js: JetStreamContext,
    group: str,
    *,
    stream: str = wire.DEAD_LETTER_STREAM,
    limit: int | None = None,
) -> AsyncIterator[DeadLetter]:
    """Every dead letter of `group` stored when the walk began, oldest first (the first
    `limit` of them when given).

    Nothing when there is no dead-letter stream (no worker has started). Dead letters
    stored during the walk are not included: a redriven event that fails again is not
    redriven twice by one `redrive`.
    """
    try:
        last = (await js.stream_info(stream)).state.last_seq
    except NotFoundError:
        return
    sequence = 1
    listed = 0
    while sequence <= last and (limit is None or listed < limit):
        try:
            raw = await js.get_msg(
                stream, seq=sequence, subject=wire.dead_letter_filter(group), next=True
            )
        except NotFoundError:
            return
        assert raw.seq is not None
        if raw.seq > last:
            return
        headers = text_headers(raw.headers)
        payload = raw.data or b""
        yield DeadLetter(
            sequence=raw.seq,
            group=headers.get(wire.DEAD_GROUP, group),
            origin_stream=headers.get(wire.ORIGIN_STREAM, ""),
            origin_subject=headers.get(wire.ORIGIN_SUBJECT, ""),
            origin_sequence=_int(headers.get(wire.ORIGIN_SEQUENCE)),
            event_id=wire.attribute_value(headers.get(wire.CE_ID, "")),
            event_type=headers.get(wire.CE_TYPE, ""),
            reason=headers.get(wire.DEAD_REASON, ""),
            error=headers.get(wire.DEAD_ERROR, ""),
            attempts=_int(headers.get(wire.DEAD_ATTEMPTS)),
            time=raw.time or datetime.fromtimestamp(0, UTC),
            payload=payload,
            headers=headers,
            original_size=_int(headers.get(wire.DEAD_TRUNCATED)) or len(payload),
        )
        listed += 1
        sequence = raw.seq + 1


async def redrive(
    js: JetStreamContext,
    group: str,
    *,
    stream: str = wire.DEAD_LETTER_STREAM,
    max_payload: int | None = None,
    refused: Refusal | None = None,
    progress: ProgressCallback | None = None,
) -> list[DeadLetter]:
    """Republish every dead letter of `group` to its origin subject, then delete it;
    returns those redriven.

    A dead letter that cannot be redriven (a truncated one whose original is gone, or one
    whose redriven event would exceed `max_payload`, the server's limit: pass it) is
    reported to `refused` (default: a warning in the log) and stays. A dead letter whose
    republish fails stays too (the error propagates); those before it are redriven
    already. Running it again is safe: a republish that reached the origin stream before
    is de-duplicated by its `Nats-Msg-Id`.

    `progress`, when given, is called once before the first dead letter and after each
    one (a dead letter without an origin subject counts as done, neither redriven nor
    refused).
    """
    report = refused or _log_refusal
    done: list[DeadLetter] = []
    state = RedriveProgress(total=await count(js, group, stream=stream) if progress else 0)
    if progress is not None:
        progress(state)
    async for dead in dead_letters(js, group, stream=stream):
        kept = False
        if dead.origin_subject:
            try:
                payload, headers = await redriven_event(js, dead)
                size = wire.encoded_headers_size(headers) + len(payload)
                if max_payload is not None and size > max_payload:
                    raise RedriveRefused(
                        f"dead letter {dead.sequence}: the redriven event would take {size} "
                        f"bytes with its redrive headers, over the server's max_payload "
                        f"{max_payload}"
                    )
            except RedriveRefused as exc:
                report(dead, str(exc))
                kept = True
            else:
                await js.publish(dead.origin_subject, payload, headers=headers)
                await js.delete_msg(stream, dead.sequence)
                done.append(dead)
        if progress is not None:
            state = RedriveProgress(
                total=max(state.total, state.done + 1),  # one stored after the count
                done=state.done + 1,
                redriven=len(done),
                refused=state.refused + int(kept),
            )
            progress(state)
    return done


async def redriven_event(js: JetStreamContext, dead: DeadLetter) -> tuple[bytes, dict[str, str]]:
    """The payload and headers to republish for `dead` (a truncated one: its original's).

    Raises RedriveRefused when `dead` is truncated and its original is no longer stored.
    """
    if not dead.truncated:
        return dead.payload, redrive_headers(dead)
    where = f"{dead.origin_stream}/{dead.origin_sequence}"
    try:
        original = await js.get_msg(dead.origin_stream, dead.origin_sequence)
    except NotFoundError:
        original = None
    headers = text_headers(original.headers) if original is not None else {}
    if (
        original is None
        or original.subject != dead.origin_subject
        or (dead.event_id and wire.attribute_value(headers.get(wire.CE_ID, "")) != dead.event_id)
    ):
        raise RedriveRefused(
            f"dead letter {dead.sequence} holds a truncated copy of event {dead.event_id or '?'} "
            f"({dead.original_size} bytes) and its original {where} is no longer stored: "
            "not redriven (inspect it with `nats stream get`, or purge it)"
        )
    return original.data or b"", _redriven(headers, dead)


def _log_refusal(dead: DeadLetter, reason: str) -> None:
    log.warning("group %s: %s", dead.group, reason)


async def count(js: JetStreamContext, group: str, *, stream: str = wire.DEAD_LETTER_STREAM) -> int:
    """How many dead letters of `group` are stored (0 without a dead-letter stream).

    The pending count of a short-lived consumer on the group's dead-letter subjects, deleted
    at once: a stream's per-subject counts (`stream_info` with a subjects filter) stop at
    100,000 subjects per answer, and a group's dead letters have a subject per origin
    subject, i.e. per event key.
    """
    counter = ConsumerConfig(
        filter_subject=wire.dead_letter_filter(group),
        ack_policy=AckPolicy.NONE,
        mem_storage=True,
        num_replicas=1,
        inactive_threshold=COUNTER_INACTIVE_THRESHOLD,
    )
    try:
        info = await js.add_consumer(stream, counter)
    except NotFoundError:
        return 0
    try:
        return info.num_pending or 0
    finally:
        with contextlib.suppress(NatsError, TimeoutError):
            await js.delete_consumer(stream, info.name)


async def purge(js: JetStreamContext, group: str, *, stream: str = wire.DEAD_LETTER_STREAM) -> int:
    """Delete every dead letter of `group`; returns how many there were (0 without a
    dead-letter stream)."""
    stored = await count(js, group, stream=stream)
    if stored:
        await js.purge_stream(stream, subject=wire.dead_letter_filter(group))
    return stored


def _int(text: str | None) -> int:
    return int(text) if text and text.isdigit() else 0
