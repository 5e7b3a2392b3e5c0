"""What `jetgate.client.Client.publish` returns: where JetStream stored the event."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Published:
    """An event JetStream acknowledged: its id, stream, subject and stream sequence.

    `duplicate`: an event with this id was already stored inside the stream's duplicate
    window (e.g. an earlier attempt); `sequence` is then the original one.
    """

    event_id: str
    stream: str
    subject: str
    sequence: int
    duplicate: bool
