"""What a handler gets besides its event (`Delivery`), and what it may raise besides a
failure: `Reject` (dead letter now), `Retry` (nak with a chosen delay), `HandBack` (give
the event back to the group at once, not an attempt of this handler's failing)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from jetgate import wire

Progress = Callable[[], Awaitable[None]]


async def _no_progress() -> None:
    return None


_NO_EXTENSIONS: Mapping[str, str] = MappingProxyType({})


class Reject(Exception):
    """Raise from a handler to dead-letter the event at once, without further attempts.

    For events that can never succeed (invalid business data, a refused command), as
    opposed to failures worth retrying, which any other exception stands for.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Retry(Exception):
    """Raise from a handler to fail this attempt and have the event delivered again after
    `delay` seconds (None: the group's backoff for this attempt).

    It is a failed attempt like any other exception: after the group's max_deliver
    attempts the event is dead-lettered. Remote members (gRPC Subscribe) raise it for NAK.
    """

    def __init__(self, delay: float | None = None) -> None:
        super().__init__("nak" if delay is None else f"nak, retry in {delay:g}s")
        self.delay = delay


class HandBack(Exception):
    """Raise from a handler to give the event back to the group at once (nak without delay):
    its handler did not run it (a remote member went away). Counted in
    `WorkerStats.handed_back`, not as a failure; JetStream still counts the delivery."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One delivery of one stored event to a handler of a consumer group.

    `attempt` is 1 on the first delivery and counts redeliveries after failures,
    timeouts and worker crashes. `headers` are the user's headers (no `Nats-*`, `ce-*`
    or trace headers); `raw_headers` has them all. `extensions` are the event's
    CloudEvents extension attributes, read-only, by attribute name (`ce-tenant: acme` is
    `{"tenant": "acme"}`): events published by the gateway have none; an event a
    CloudEvents SDK published straight into the stream has those its producer set.
    `stored_time` is when JetStream stored the event; `payload` the event as stored (the
    serialized message the handler gets decoded).

    It holds what a handler may know and do, and nothing that settles the event: the
    worker alone acknowledges, naks or dead-letters it, from the handler's outcome (a
    handler that could `ack()` the NATS message would settle it twice). The worker passes
    `_progress`, the one thing a handler may do to the message (see `in_progress`).
    """

    event_id: str
    event_type: str
    key: str
    source: str
    time: datetime
    subject: str
    stream: str
    sequence: int
    attempt: int
    group: str
    headers: Mapping[str, str] = field(default_factory=dict)
    raw_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    extensions: Mapping[str, str] = field(default_factory=lambda: _NO_EXTENSIONS)
    stored_time: datetime | None = None
    payload: bytes = field(default=b"", repr=False, compare=False)
    _progress: Progress = field(default=_no_progress, repr=False, compare=False)

    @property
    def principal(self) -> str | None:
        """Who published the event, as the gateway authenticated it (`Jetgate-Principal`).

        None when the gateway that stored it authenticates no caller. Only the gateway
        writes this header (clients cannot set `Jetgate-*` headers).
        """
        return self.raw_headers.get(wire.PRINCIPAL)

    async def in_progress(self) -> None:
        """Tell JetStream the handler is still working: restarts the ack_wait timer.

        The worker already does this every ack_wait/2 while a handler runs; call it
        yourself only to be explicit.
        """
        await self._progress()

    def follow_up_id(self, name: str) -> str:
        """The event id for follow-up `name` of this event (e.g. `"OrderPaid"`).

        Deterministic: a redelivered event publishes its follow-up with the same id, which
        the stream de-duplicates inside its duplicate window, so one cause yields one
        follow-up however often its handler runs.
        """
        return wire.derived_event_id(self.event_id, name)
