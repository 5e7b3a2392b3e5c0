"""Admin streams: what JetStream says about each stream the gateway manages.

The managed streams are those of the configuration (`[[streams]]`), in its order, then the
dead-letter stream `DLQ` when it exists (workers create it at their first start; it holds
every group's dead letters, so its size matters to an operator; no event type is routed to
it). The gateway's health-probe stream is its own business and is not listed. A
configured stream that JetStream does not hold (it is being recreated after a restart of
a memory-storage server) is left out of the list, and GetStream on it is NOT_FOUND.

One `$JS.API.STREAM.INFO` request per stream, read as JSON: nats-py's `StreamInfo` drops
the fields an operator wants first (`first_ts`, `last_ts`, `num_subjects`), and asking for
them another way would cost a message get per time and a subject listing per count.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import timestamp_pb2
from nats.aio.client import Client as NATS
from nats.js.api import DEFAULT_PREFIX
from nats.js.errors import APIError, NotFoundError

from jetgate import wire
from jetgate.v1 import admin_pb2

# JetStream's zero time (Go's time.Time{}): a stream that never stored anything.
_ZERO_TIME_PREFIX = "0001-01-01"


def managed_streams(configured: Sequence[str]) -> list[str]:
    """The names a stream method may name: the configured ones, then the DLQ."""
    return [
        *configured,
        *([] if wire.DEAD_LETTER_STREAM in configured else [wire.DEAD_LETTER_STREAM]),
    ]


async def stream_info(nc: NATS, name: str, *, within: float) -> Mapping[str, Any] | None:
    """JetStream's stream info of `name` as JSON; None when JetStream has no such stream.

    Raises what nats-py raises for a failed request (TimeoutError, NoRespondersError, an
    APIError for a refusal other than "not found").
    """
    reply = await nc.request(f"{DEFAULT_PREFIX}.STREAM.INFO.{name}", b"", timeout=within)
    answer: dict[str, Any] = json.loads(reply.data)
    if "error" in answer:
        try:
            APIError.from_error(answer["error"])
        except NotFoundError:
            return None
    return answer


def stream_message(info: Mapping[str, Any], event_types: Sequence[str]) -> admin_pb2.StreamInfo:
    """The Admin `StreamInfo` of JetStream's stream info `info` (see `stream_info`)."""
    config: Mapping[str, Any] = info.get("config") or {}
    state: Mapping[str, Any] = info.get("state") or {}
    cluster: Mapping[str, Any] = info.get("cluster") or {}
    message = admin_pb2.StreamInfo(
        name=str(config.get("name", "")),
        subjects=[str(s) for s in config.get("subjects") or ()],
        messages=int(state.get("messages", 0)),
        bytes=int(state.get("bytes", 0)),
        first_sequence=int(state.get("first_seq", 0)),
        last_sequence=int(state.get("last_seq", 0)),
        subjects_count=int(state.get("num_subjects", 0)),
        replicas=int(config.get("num_replicas") or 1),
        # A single server names itself leader of every stream; no cluster, no leader.
        leader=str(cluster.get("leader") or "") if cluster.get("name") else "",
        cluster=str(cluster.get("name") or ""),
        event_types=list(event_types),
        storage=str(config.get("storage", "")),
        consumers=int(state.get("consumer_count", 0)),
    )
    _set_time(message.first_time, state.get("first_ts"))
    _set_time(message.last_time, state.get("last_ts"))
    if not message.messages:
        # JetStream keeps the time of the last stored message after a purge; with nothing
        # stored, the first time is meaningless (it would be "now").
        message.ClearField("first_time")
    return message


def _set_time(field: timestamp_pb2.Timestamp, text: object) -> None:
    if not isinstance(text, str) or not text or text.startswith(_ZERO_TIME_PREFIX):
        return
    try:
        field.FromJsonString(text)
    except ValueError:  # not RFC 3339: left unset rather than failing the whole answer
        field.Clear()
