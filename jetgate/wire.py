"""The NATS wire contract of jetgate: header names, subject rules, event encoding.

Gateway and consumers both take the wire format from this module and from nowhere else
(the gateway imports `consumers` only for its CLI), so what a stored event looks like is
decided here only.

A stored event is a JetStream message with
- subject `<route prefix>.<EventTypeName>.<key>` (e.g. `orders.OrderPlaced.o-42`),
- payload: the serialized typed protobuf message (not the `Any` wrapper),
- headers: `Nats-Msg-Id` (= event id, JetStream de-duplication), the CloudEvents context
  attributes (below), optional `Nats-TTL`, W3C trace context headers, `Jetgate-Principal`
  (who published it, when the gateway authenticates its callers) and the user's headers.

CloudEvents: every stored event is a CloudEvent 1.0 (core spec v1.0.2) in the binary
content mode of the NATS protocol binding (v1.0.3-wip, the first with binary mode; sdk-go's
`protocol/nats_jetstream` reads it): one `ce-<attribute>` header per context attribute.
- `ce-specversion: 1.0`; `ce-id` (the event id); `ce-type` (full proto name);
  `ce-source` (a URI-reference or IRI-reference, checked by the gateway); `ce-subject` (the key);
  `ce-time` (RFC 3339, UTC, microseconds).
- `ce-dataschema: https://type.googleapis.com/<full proto name>`. CloudEvents wants an
  absolute URI (SDKs refuse anything else: sdk-go's `Validate`, which its receiver runs);
  the protobuf event format says dataschema SHOULD be the type URL of the data. A type URL
  with the `https` scheme is both: `Any` accepts it (the name is after the last `/`).
  Events stored before held the scheme-less `type.googleapis.com/<name>`; readers take the
  type from `ce-type` and `type_from_url` reads either form.
- `ce-datacontenttype: application/protobuf`, and the same value in `content-type` (which
  sdk-go 2.16 reads too; the binding names only `ce-datacontenttype`).
- Values are percent-encoded as the binding says (space, `"`, `%` and anything outside
  printable ASCII as `%XX` of its UTF-8), which changes nothing for the ids, keys and
  sources of ordinary events; `attribute_value` decodes (also a double-quoted value). sdk-go
  2.16 does not decode: an id, key or source with `%`, `"` or non-ASCII characters shows
  there in its encoded form.
- Any other `ce-*` header is an extension attribute (`extensions`): jetgate writes none;
  events published straight into a stream by a CloudEvents SDK carry theirs to consumers.
"""

from __future__ import annotations

import functools
import os
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final

SPEC_VERSION: Final = "1.0"
CONTENT_TYPE_PROTOBUF: Final = "application/protobuf"
TYPE_URL_PREFIX: Final = "type.googleapis.com/"
# `ce-dataschema`: the type URL with a scheme, so that it is an absolute URI (see above).
DATA_SCHEMA_PREFIX: Final = "https://" + TYPE_URL_PREFIX

# JetStream headers.
MSG_ID: Final = "Nats-Msg-Id"
TTL: Final = "Nats-TTL"
EXPECTED_STREAM: Final = "Nats-Expected-Stream"
EXPECTED_LAST_SEQUENCE: Final = "Nats-Expected-Last-Sequence"
EXPECTED_LAST_SUBJECT_SEQUENCE: Final = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: Final = "Nats-Expected-Last-Subject-Sequence-Subject"
EXPECTED_LAST_MSG_ID: Final = "Nats-Expected-Last-Msg-Id"
# Atomic batch framing. JetStream stores them with the message, so an event stored by an
# atomic PublishBatch or by the gateway's group commit (durability = "fsync") carries them;
# they say how it was committed, nothing about the event: consumers ignore them.
BATCH_ID: Final = "Nats-Batch-Id"
BATCH_SEQUENCE: Final = "Nats-Batch-Sequence"
BATCH_COMMIT: Final = "Nats-Batch-Commit"
# The status line of a reply without a body (`NATS/1.0 503 No Responders`) arrives as the
# headers `Status` and `Description` (nats-py). Statuses jetgate tells apart: 503 no responders
# (no stream took a publish; a pull's consumer is gone), 100 an idle heartbeat of a pull, 404
# no messages and 408 a pull request that expired (both the normal end of a pull), 409 a
# pull ended by the consumer (its reason in Description; "Leadership Change": the
# consumer's leader moved to another node of a cluster, pull again at once).
STATUS: Final = "Status"
STATUS_DESCRIPTION: Final = "Description"
STATUS_NO_RESPONDERS: Final = "503"
STATUS_IDLE_HEARTBEAT: Final = "100"
STATUS_NO_MESSAGES: Final = "404"
STATUS_REQUEST_TIMEOUT: Final = "408"
STATUS_CONFLICT: Final = "409"
LEADERSHIP_CHANGE: Final = "Leadership Change"

# Size limits nats-server enforces on one message (a message over them is refused or,
# over max_payload, makes the server close the connection). The header block is at most
# 64 KiB - 1 (JetStream stores its length in 16 bits; JSStreamHeaderExceedsMaximumErr).
MAX_HEADERS_SIZE: Final = 0xFFFF
# `Nats-TTL` in whole seconds. nats-server computes a message's expiry as nanoseconds since
# 1970 in a signed 64-bit integer (filestore/memstore: ts + ttl * 1s): past year 2262 it
# overflows and the message is deleted at once, though acknowledged. 100 years keeps every
# ttl far from that until the 2160s.
MIN_TTL_SECONDS: Final = 1
MAX_TTL_SECONDS: Final = 100 * 36525 * 864  # 100 Julian years: 3,155,760,000 s
# Atomic batches: `Nats-Batch-Id` (see new_batch_id), `Nats-Batch-Sequence` (1-based), and
# `Nats-Batch-Commit: 1` on the last message. JetStream takes at most 1000 per batch.
MAX_ATOMIC_BATCH_ENTRIES: Final = 1000
BATCH_ID_LENGTH: Final = 32

# JetStream API error codes (`err_code` in an API error; nats-server's errors.json). They
# are the server's protocol, shared by every side that talks to JetStream, so they live here.
JS_CLUSTER_NOT_AVAILABLE: Final = 10008  # "JetStream system temporarily unavailable"
JS_INSUFFICIENT_RESOURCES: Final = 10023  # account or server storage limit reached
JS_MAXIMUM_STREAMS: Final = 10027  # account limit on the number of streams
JS_MEMORY_RESOURCES: Final = 10028  # insufficient memory resources
JS_MESSAGE_EXCEEDS_MAXIMUM: Final = 10054
JS_STREAM_NOT_FOUND: Final = 10059
JS_WRONG_LAST_MSG_ID: Final = 10070
JS_WRONG_LAST_SEQUENCE: Final = 10071
JS_STREAM_STORE_FAILED: Final = 10077  # e.g. "maximum bytes exceeded" (discard new)
JS_HEADER_EXCEEDS_MAXIMUM: Final = 10097
JS_WRONG_LAST_SEQUENCE_CONSTANT: Final = 10164  # in a batch: no actual sequence given
JS_MSG_ID_IN_PROCESS: Final = 10158  # "duplicate message id is in process": retry it
JS_MESSAGE_TTL_DISABLED: Final = 10166
JS_MESSAGE_TTL_INVALID: Final = 10165
JS_ATOMIC_UNSUPPORTED_HEADER: Final = 10177
JS_ATOMIC_DUPLICATE_MSG_ID: Final = 10201

# The metadata key jetgate writes on streams (the event types routed to the stream) and on
# consumer groups' consumers (the types the group handles): full proto names, comma-joined,
# so `nats stream info` / `nats consumer info` explain themselves.
EVENT_TYPES_METADATA: Final = "jetgate.event_types"

# On a consumer group's consumer: the group's retry delays (the runtime applies them to naks,
# not JetStream: see consumers/group.py), e.g. "1s,5s,30s", "-" for none.
BACKOFF_METADATA: Final = "jetgate.backoff"
# On a consumer group's consumer: the group's max_deliver (the consumer's own is one more).
MAX_DELIVER_METADATA: Final = "jetgate.max_deliver"
# On the consumer of a group declared in the gateway's configuration (`[[groups]]`): who
# declared it. A Python group of that name must then have the same settings (it joins, never
# changes them). Its `EVENT_TYPES_METADATA` holds the declared type globs ("*": every type).
DECLARED_METADATA: Final = "jetgate.declared"
DECLARED_BY_CONFIG: Final = "config"

# CloudEvents attributes (binary mode: one header each).
CE_SPECVERSION: Final = "ce-specversion"
CE_ID: Final = "ce-id"
CE_TYPE: Final = "ce-type"
CE_SOURCE: Final = "ce-source"
CE_TIME: Final = "ce-time"
CE_SUBJECT: Final = "ce-subject"
CE_DATASCHEMA: Final = "ce-dataschema"
CE_DATACONTENTTYPE: Final = "ce-datacontenttype"
CONTENT_TYPE: Final = "content-type"
CE_PREFIX: Final = "ce-"
# The context attributes of CloudEvents 1.0 (headers); any other `ce-*` is an extension.
CE_ATTRIBUTES: Final = frozenset(
    {
        CE_SPECVERSION,
        CE_ID,
        CE_TYPE,
        CE_SOURCE,
        CE_TIME,
        CE_SUBJECT,
        CE_DATASCHEMA,
        CE_DATACONTENTTYPE,
    }
)

# W3C trace context, injected by the gateway, never by users.
TRACE_HEADERS: Final = ("traceparent", "tracestate", "baggage")

# Dead letters of consumer groups: stream `DLQ`, subject `dlq.<group>.<origin subject>`, the
# original payload and headers plus these (all `Jetgate-*` names are reserved).
DEAD_LETTER_STREAM: Final = "DLQ"
DEAD_LETTER_PREFIX: Final = "dlq"
ORIGIN_STREAM: Final = "Jetgate-Origin-Stream"
ORIGIN_SUBJECT: Final = "Jetgate-Origin-Subject"
ORIGIN_SEQUENCE: Final = "Jetgate-Origin-Sequence"
DEAD_GROUP: Final = "Jetgate-Group"
DEAD_ATTEMPTS: Final = "Jetgate-Attempts"
DEAD_REASON: Final = "Jetgate-Reason"  # a DeadLetterReason
DEAD_ERROR: Final = "Jetgate-Error"
DEAD_TIME: Final = "Jetgate-Dead-At"
# A dead letter always fits nats-server's max_payload: when the original's payload and
# headers plus the ones above do not, the dead letter keeps as much of the payload as fits
# (possibly none) and says so: `Jetgate-Truncated: <original payload bytes>`; if even the
# headers do not fit, it drops the original's headers (`Jetgate-Dropped-Headers: <count>`).
# Origin stream and sequence then are the reference to the whole event: redrive re-reads it
# from there, and refuses a truncated dead letter whose original is gone.
DEAD_TRUNCATED: Final = "Jetgate-Truncated"
DEAD_DROPPED_HEADERS: Final = "Jetgate-Dropped-Headers"
# A dead letter keeps every header of the original but JetStream's own (id, TTL and
# preconditions of the original publish, wrong for the copy); a redriven event drops the
# dead letter's `Jetgate-*` headers too.
DEAD_LETTER_HEADER_PREFIX: Final = "jetgate-"  # the headers a dead letter adds (case-insensitive)
DEAD_LETTER_DROPS: Final = ("nats-",)
REDRIVE_DROPS: Final = ("nats-", DEAD_LETTER_HEADER_PREFIX)
# What a dead letter too big with all the original's headers keeps of them: CloudEvents only.
DEAD_LETTER_KEEPS_WHEN_SHORT: Final = ("ce-",)
# A redriven event is for the group that dead-lettered it; other groups skip it.
REDRIVE_GROUP: Final = "Jetgate-Redrive-Group"


class DeadLetterReason(StrEnum):
    """Why a consumer group dead-lettered an event (`Jetgate-Reason`)."""

    REJECT = "reject"  # the handler raised Reject
    UNKNOWN_TYPE = "unknown-type"  # the group has no handler for the event's type
    UNDECODABLE = "undecodable"  # not a jetgate event, or a payload not of its type
    EXHAUSTED = "exhausted"  # the last allowed attempt failed (or timed out)


# The authenticated caller that published the event (gateway.auth: a SPIFFE id, a token's
# name, a JWT's subject), written by the gateway only: `Jetgate-*` is reserved, so a client
# can never set or forge it. Absent when the gateway authenticates nobody. A dead letter
# keeps it, like every header of the original.
PRINCIPAL: Final = "Jetgate-Principal"
MAX_PRINCIPAL_LENGTH: Final = 1024
# The `Jetgate-*` headers a redriven event keeps: who published the original.
REDRIVE_KEEPS: Final = frozenset({PRINCIPAL.lower()})

RESERVED_HEADER_PREFIXES: Final = ("nats-", "ce-", "jetgate-")
RESERVED_HEADER_NAMES: Final = frozenset({*TRACE_HEADERS, CONTENT_TYPE, "status", "description"})

MAX_KEY_LENGTH: Final = 128
MAX_EVENT_ID_LENGTH: Final = 128
MAX_HEADER_NAME_LENGTH: Final = 128
MAX_HEADER_VALUE_LENGTH: Final = 4096
MAX_GROUP_LENGTH: Final = 64

_KEY_FORBIDDEN = re.compile(r"[.*>\s\x00-\x1f\x7f]")
# RFC 7230 token characters: what NATS (and HTTP) accept as a header name.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_PRINTABLE_ASCII = re.compile(r"^[\x21-\x7e]+$")
_SUBJECT_TOKEN = re.compile(r"^[^.*>\s]+$")
_FOLLOW_UP_NAMESPACE = uuid.UUID("5f2d7a0e-4b6c-4d59-9a51-6a8d0c3e1b27")
_GROUP_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_LINE_BREAKS = re.compile(r"[\s\x00-\x1f\x7f]+")


def key_problem(key: str) -> str | None:
    """Why `key` cannot be the last subject token, or None when it can."""
    if not key:
        return "key is required"
    if len(key) > MAX_KEY_LENGTH:
        return f"key is {len(key)} characters long; at most {MAX_KEY_LENGTH} are allowed"
    bad = _KEY_FORBIDDEN.search(key)
    if bad:
        return (
            f"key contains {bad.group()!r} at index {bad.start()}; "
            "'.', '*', '>', whitespace and control characters are not allowed"
        )
    return None


def event_id_problem(event_id: str) -> str | None:
    """Why `event_id` is unusable as `Nats-Msg-Id`/`ce-id`, or None. Empty is fine (generated)."""
    if not event_id:
        return None
    if len(event_id) > MAX_EVENT_ID_LENGTH:
        return f"id is {len(event_id)} characters long; at most {MAX_EVENT_ID_LENGTH} are allowed"
    if not _PRINTABLE_ASCII.match(event_id):
        return "id must be printable ASCII without whitespace"
    return None


def is_reserved_header(name: str) -> bool:
    """Whether `name` belongs to JetStream, CloudEvents or tracing, never to users."""
    lower = name.lower()
    return lower.startswith(RESERVED_HEADER_PREFIXES) or lower in RESERVED_HEADER_NAMES


def header_problem(name: str, value: str) -> str | None:
    """Why a user header cannot be stored as given, or None when it can."""
    if not _HEADER_NAME.match(name) or len(name) > MAX_HEADER_NAME_LENGTH:
        return (
            f"header name {name!r} must be 1-{MAX_HEADER_NAME_LENGTH} token characters (RFC 7230)"
        )
    if is_reserved_header(name):
        reserved = ", ".join(sorted(RESERVED_HEADER_NAMES))
        return f"header name {name!r} is reserved (Nats-*, ce-*, Jetgate-*, {reserved})"
    return header_value_problem(f"header {name!r} value", value)


def header_value_problem(what: str, value: str, limit: int = MAX_HEADER_VALUE_LENGTH) -> str | None:
    """Why `value` cannot be stored as a header value exactly as given, or None.

    One rule for every value a client gives (user headers, `ce-source`): NATS strips a
    value's surrounding whitespace and a CR or LF would end the header, so both are refused
    rather than changed. `what` names the value in the message.
    """
    if len(value) > limit:
        return f"{what} is longer than {limit} characters"
    if "\r" in value or "\n" in value:
        return f"{what} must not contain CR or LF"
    if value != value.strip():
        return f"{what} must not start or end with whitespace (NATS strips it)"
    return None


# RFC 3986: the characters of a URI (unreserved, reserved) and `%XX` escapes; plus the
# non-ASCII characters of an IRI (RFC 3987), which the header's percent-encoding turns into
# the URI of that IRI (`srcé` is stored as `src%C3%A9`).
_URI_CHARACTERS = re.compile(
    r"^(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=\u00a0-\ud7ff\uf900-\U0010ffff]|%[0-9A-Fa-f]{2})+$"
)
_URI_SPLIT = re.compile(r"^(?:([^:/?#]+):)?(?://([^/?#]*))?([^?#]*)(?:\?([^#]*))?(?:#(.*))?$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*$")
_AUTHORITY = re.compile(r"^(?:[^@\[\]]*@)?(?:\[[0-9A-Fa-f:.vV]+\]|[^:\[\]@]*)(?::[0-9]*)?$")


def uri_reference_problem(what: str, value: str) -> str | None:
    """Why `value` is not a non-empty URI-reference (RFC 3986 section 4.1), or None.

    CloudEvents `source` is one (e.g. `https://shop.example/orders`, `urn:shop:orders`,
    `/orders/eu-1`, `orders-service`); SDKs parse it as a URI and refuse the event otherwise.
    Non-ASCII letters are accepted as in an IRI-reference (RFC 3987): `header_attribute`
    stores them percent-encoded, which is the URI of that IRI. `what` names the value.
    """
    if not value:
        return f"{what} must not be empty (a URI-reference)"
    if not _URI_CHARACTERS.match(value):
        return (
            f"{what} must be a URI-reference (RFC 3986): letters, digits, "
            "-._~:/?#[]@!$&'()*+,;= and %XX escapes only (no spaces or control characters)"
        )
    parts = _URI_SPLIT.match(value)
    assert parts is not None  # every string matches
    scheme, authority, path, query, fragment = parts.groups()
    if scheme is not None and not _SCHEME.match(scheme):
        return (
            f"{what} {value!r} is not a URI-reference: {scheme!r} is no URI scheme, and a "
            "relative reference cannot have ':' in its first path segment"
        )
    if authority is not None and not _AUTHORITY.match(authority):
        return f"{what} {value!r} is not a URI-reference: bad authority {authority!r}"
    if any("[" in p or "]" in p or "#" in p for p in (path, query or "", fragment or "")):
        return f"{what} {value!r} is not a URI-reference: '[', ']' or a second '#' out of place"
    return None


def ttl_problem(seconds: int, nanos: int = 0) -> str | None:
    """Why `seconds` (+ `nanos`) cannot be a message's `Nats-TTL`, or None."""
    if nanos or not MIN_TTL_SECONDS <= seconds <= MAX_TTL_SECONDS:
        return (
            f"ttl must be whole seconds from {MIN_TTL_SECONDS}s to {MAX_TTL_SECONDS}s "
            "(100 years; nats-server cannot keep a longer one)"
        )
    return None


def group_problem(name: str) -> str | None:
    """Why `name` cannot name a consumer group (a durable consumer and a subject token)."""
    if not _GROUP_NAME.match(name) or len(name) > MAX_GROUP_LENGTH:
        return f"group name {name!r} must be 1-{MAX_GROUP_LENGTH} characters of A-Z a-z 0-9 _ -"
    return None


def header_text(text: str, limit: int = 1024) -> str:
    """`text` as a header value: one line, no control characters, at most `limit` characters."""
    line = _LINE_BREAKS.sub(" ", text).strip() or "-"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def prefix_problem(prefix: str) -> str | None:
    """Why `prefix` is not a literal subject prefix (dot-separated tokens), or None."""
    if not prefix or any(not _SUBJECT_TOKEN.match(t) for t in prefix.split(".")):
        return f"subject prefix {prefix!r} must be literal dot-separated tokens"
    return None


def subject_filter_covers(filter: str, sub_filter: str) -> bool:
    """Whether every subject matched by NATS filter `sub_filter` is matched by `filter`.

    Subjects are tokens separated by '.'; in a filter, a `*` token matches exactly one
    token and a final `>` token matches one or more tokens. Any other token, including one
    merely containing `*` or `>`, is literal. Examples: `orders.>` covers
    `orders.OrderPlaced.*`; `orders.*.*` covers `orders.OrderPlaced.*` but not `orders.>`.
    Raises ValueError when either filter has an empty token or a `>` before its end.
    """
    wanted = filter_tokens(filter)
    given = filter_tokens(sub_filter)
    for index, token in enumerate(wanted):
        if token == ">":
            return len(given) > index
        if index >= len(given) or given[index] == ">":
            return False
        if token != "*" and given[index] != token:
            return False
    return len(given) == len(wanted)


def filter_tokens(subject_filter: str) -> list[str]:
    """The tokens of a subject filter; ValueError for an empty token or a non-final `>`."""
    tokens = subject_filter.split(".")
    if "" in tokens or ">" in tokens[:-1]:
        raise ValueError(
            f"{subject_filter!r} is not a valid subject filter "
            "(empty token, or '>' before the last token)"
        )
    return tokens


def type_name(full_name: str) -> str:
    """The subject token of a proto type: its simple name (`a.v1.OrderPlaced` -> `OrderPlaced`)."""
    return full_name.rsplit(".", 1)[-1]


def subject(prefix: str, full_type_name: str, key: str) -> str:
    """The subject of an event: `<prefix>.<EventTypeName>.<key>`. Validate `key` first."""
    return f"{prefix}.{type_name(full_type_name)}.{key}"


def key_filter(prefix: str, key: str) -> str:
    """The subject filter matching every event of one key (the aggregate): `<prefix>.*.<key>`."""
    return f"{prefix}.*.{key}"


def type_url(full_type_name: str) -> str:
    """The `Any` type URL of a proto type: `type.googleapis.com/<full name>`."""
    return TYPE_URL_PREFIX + full_type_name


def data_schema(full_type_name: str) -> str:
    """The `ce-dataschema` of a proto type: `https://type.googleapis.com/<full name>`."""
    return DATA_SCHEMA_PREFIX + full_type_name


def type_from_url(url: str) -> str:
    """The full proto name of a type URL or dataschema (the part after the last '/')."""
    return url.rsplit("/", 1)[-1]


def dead_letter_subject(group: str, origin_subject: str) -> str:
    """Where `group` dead-letters an event stored on `origin_subject`."""
    return f"{DEAD_LETTER_PREFIX}.{group}.{origin_subject}"


def dead_letter_filter(group: str) -> str:
    """The subject filter of every dead letter of `group`."""
    return f"{DEAD_LETTER_PREFIX}.{group}.>"


def dead_letter_msg_id(group: str, stream: str, sequence: int) -> str:
    """The `Nats-Msg-Id` of a dead letter: a worker that dies after storing it and before
    terminating the original stores it only once when the event is dead-lettered again."""
    return f"dlq:{group}:{stream}:{sequence}"


def redrive_msg_id(event_id: str, dead_letter_sequence: int) -> str:
    """The `Nats-Msg-Id` of a redriven event: not the event id, which the origin stream may
    still hold in its duplicate window, but unique per dead letter (redrive is idempotent)."""
    return f"{event_id}:redrive:{dead_letter_sequence}"


def derived_event_id(cause_id: str, name: str) -> str:
    """A deterministic event id for the follow-up `name` of event `cause_id` (a UUIDv5).

    A handler that runs again for the same event publishes the same id, which JetStream
    de-duplicates inside the stream's duplicate window.
    """
    return str(uuid.uuid5(_FOLLOW_UP_NAMESPACE, f"{cause_id}/{name}"))


def new_event_id() -> str:
    """A fresh UUIDv7 (RFC 9562): time-ordered, so ids sort by creation time."""
    # 48-bit Unix milliseconds, then random bits; version and variant nibbles set in place.
    h = ((time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10)).hex()
    variant = "89ab"[int(h[16], 16) & 3]
    return f"{h[:8]}-{h[8:12]}-7{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds, e.g. `2026-11-26T14:00:00.123456Z`."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def parse_time(text: str) -> datetime:
    """Inverse of `format_time`: any RFC 3339 time with an offset or `Z` (`t`/`z` too, and
    more than 6 fractional digits, cut to microseconds, as CloudEvents SDKs write them).

    Raises ValueError for anything else.
    """
    return datetime.fromisoformat(text.upper().replace("Z", "+00:00"))


# What the NATS binding percent-encodes in a header value: space, `"`, `%` and anything
# outside printable ASCII (control characters included).
_NEEDS_ENCODING = re.compile(r'[^\x21-\x7e]|["%]')
_PERCENT_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")


def header_attribute(value: str) -> str:
    """`value` as a CloudEvents attribute header value (the NATS binding's percent-encoding)."""
    if not _NEEDS_ENCODING.search(value):
        return value
    return _NEEDS_ENCODING.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), value)


def attribute_value(header: str) -> str:
    """The attribute value of a `ce-*` header value: a double-quoted string unescaped, then
    percent-decoded once (UTF-8); a run of escapes that is not valid UTF-8 is kept as it is."""
    if len(header) >= 2 and header[0] == header[-1] == '"':
        header = re.sub(r"\\(.)", r"\1", header[1:-1])
    if "%" not in header:
        return header
    return _PERCENT_ESCAPES.sub(_decode_escapes, header)


def _decode_escapes(match: re.Match[str]) -> str:
    text = match.group()
    try:
        return bytes.fromhex(text.replace("%", "")).decode("utf-8")
    except UnicodeDecodeError:
        return text


def extensions(headers: Mapping[str, str]) -> dict[str, str]:
    """The CloudEvents extension attributes in `headers`: every `ce-*` header that is not a
    context attribute, by attribute name (lower case, without `ce-`), values decoded."""
    found = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith(CE_PREFIX) and lower not in CE_ATTRIBUTES:
            found[lower[len(CE_PREFIX) :]] = attribute_value(value)
    return found


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """Everything stored beside the payload of one event, validated by the publisher."""

    id: str
    type: str
    source: str
    key: str
    time: datetime
    headers: Mapping[str, str] = field(default_factory=dict)
    ttl_seconds: int | None = None
    # The authenticated publisher (`Jetgate-Principal`); None: the gateway authenticated none.
    principal: str | None = None


def encode_headers(
    envelope: Envelope,
    *,
    expectations: Mapping[str, str] | None = None,
    trace: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A fresh NATS header dict for `envelope` (never shared: nats-py mutates it)."""
    headers = dict(envelope.headers)
    if trace:
        headers.update(trace)
    headers.update(
        {
            MSG_ID: envelope.id,
            CE_SPECVERSION: SPEC_VERSION,
            CE_ID: header_attribute(envelope.id),
            CE_TYPE: envelope.type,
            CE_SOURCE: header_attribute(envelope.source),
            CE_TIME: format_time(envelope.time),
            CE_SUBJECT: header_attribute(envelope.key),
            CE_DATASCHEMA: data_schema(envelope.type),
            CE_DATACONTENTTYPE: CONTENT_TYPE_PROTOBUF,
            CONTENT_TYPE: CONTENT_TYPE_PROTOBUF,
        }
    )
    if envelope.ttl_seconds is not None:
        headers[TTL] = str(envelope.ttl_seconds)
    if envelope.principal is not None:
        headers[PRINCIPAL] = principal_header(envelope.principal)
    if expectations:
        headers.update(expectations)
    return headers


# The header block without any header: `NATS/1.0\r\n\r\n`.
EMPTY_HEADERS_SIZE: Final = len(b"NATS/1.0\r\n\r\n")


def encoded_headers_size(headers: Mapping[str, str]) -> int:
    """Bytes the header block takes on the wire (`NATS/1.0\\r\\n`, `k: v\\r\\n`..., `\\r\\n`)."""
    size = EMPTY_HEADERS_SIZE
    for name, value in headers.items():
        # ASCII (nearly always): characters are bytes, no need to encode.
        size += len(name) if name.isascii() else len(name.encode())
        size += (len(value) if value.isascii() else len(value.encode())) + 4
    return size


def decode_envelope(subject_: str, headers: Mapping[str, str]) -> Envelope:
    """The envelope of a stored event from its subject and headers (consumers, replay).

    Reads what the gateway stores and what a CloudEvents SDK publishes in binary mode
    (attribute values decoded, `ce-subject` optional: the key is then the last subject
    token). Raises ValueError when the message is not a jetgate event (missing ce-type or
    ce-id, or a ce-time that is not RFC 3339).
    """
    try:
        event_type = headers[CE_TYPE]
        event_id = headers[CE_ID]
    except KeyError as missing:
        raise ValueError(f"not a jetgate event: header {missing} missing") from None
    raw_time = headers.get(CE_TIME)
    user = {k: v for k, v in headers.items() if not is_reserved_header(k)}
    ttl = headers.get(TTL)
    key = headers.get(CE_SUBJECT)
    try:
        moment = parse_time(attribute_value(raw_time)) if raw_time else None
    except ValueError:
        raise ValueError(f"{CE_TIME} {raw_time!r} is not an RFC 3339 time") from None
    return Envelope(
        id=attribute_value(event_id),
        type=attribute_value(event_type),
        source=attribute_value(headers.get(CE_SOURCE, "")),
        key=attribute_value(key) if key else subject_.rsplit(".", 1)[-1],
        time=moment or datetime.fromtimestamp(0, UTC),
        headers=user,
        ttl_seconds=int(ttl) if ttl and ttl.isdigit() else None,
        principal=headers.get(PRINCIPAL),
    )


@functools.lru_cache(maxsize=1024)  # a few principals, one value per event
def principal_header(name: str) -> str:
    """A principal's name as its `Jetgate-Principal` value: one line, bounded.

    Names come from certificates and token claims, not from this process: a CR or LF
    would end the header, so line breaks and control characters become spaces.
    """
    return header_text(name, MAX_PRINCIPAL_LENGTH)


def new_batch_id() -> str:
    """A fresh `Nats-Batch-Id` of BATCH_ID_LENGTH characters."""
    return uuid.uuid4().hex


def batch_headers(batch_id: str, sequence: int, *, commit: bool) -> dict[str, str]:
    """The headers that frame message `sequence` (1-based) of atomic batch `batch_id`."""
    headers = {BATCH_ID: batch_id, BATCH_SEQUENCE: str(sequence)}
    if commit:
        headers[BATCH_COMMIT] = "1"
    return headers


# The most bytes the atomic batch headers add to a message (the gateway reserves them when
# it checks an atomic batch entry's size).
ATOMIC_BATCH_HEADERS_SIZE: Final = (
    encoded_headers_size(
        batch_headers("x" * BATCH_ID_LENGTH, MAX_ATOMIC_BATCH_ENTRIES, commit=True)
    )
    - EMPTY_HEADERS_SIZE
)


# Reading many stored events (gateway Read): the same decoding as `decode_envelope` and
# `extensions`, split so that what repeats from event to event is computed once. Events of
# one route carry the same header names in the same order (their values differ), and
# their `ce-time` values share the second with many neighbours.


@dataclass(frozen=True, slots=True)
class HeaderLayout:
    """What the headers of a stored message are, by name (`header_layout`)."""

    # The user headers (not reserved: `is_reserved_header`), in order.
    user: tuple[str, ...]
    # (header name, extension attribute name) of each CloudEvents extension (`extensions`).
    extensions: tuple[tuple[str, str], ...]


@functools.lru_cache(maxsize=1024)  # one layout per route and tracing: a few
def header_layout(names: tuple[str, ...]) -> HeaderLayout:
    """The layout of headers named `names` (a message's header names, in order):
    `{n: headers[n] for n in layout.user}` equals `decode_envelope(...).headers`, and
    `{attr: attribute_value(headers[n]) for n, attr in layout.extensions}` `extensions(headers)`."""
    user = tuple(name for name in names if not is_reserved_header(name))
    found = []
    for name in names:
        lower = name.lower()
        if lower.startswith(CE_PREFIX) and lower not in CE_ATTRIBUTES:
            found.append((name, lower[len(CE_PREFIX) :]))
    return HeaderLayout(user=user, extensions=tuple(found))


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND: Final = timedelta(microseconds=1)
# `format_time`'s form up to the seconds (ASCII digits only): `2026-11-26T14:00:00`.
_SECOND_PREFIX = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}")
_FORMAT_TIME_LENGTH: Final = len("2026-11-26T14:00:00.123456Z")


def time_parts(text: str) -> tuple[int, int]:
    """(seconds, nanoseconds) since 1970 (Timestamp fields: nanoseconds 0-999,999,999) of
    `parse_time(text)`, at microsecond precision; ValueError where `parse_time` raises.

    `format_time`'s form (`2026-11-26T14:00:00.123456Z`) is read without `datetime`: the
    seconds of its first 19 characters are cached (replayed events share their seconds)."""
    if (
        len(text) == _FORMAT_TIME_LENGTH
        and text[19] == "."
        and text[26] == "Z"
        and (fraction := text[20:26]).isascii()
        and fraction.isdigit()
    ):
        seconds = _prefix_seconds(text[:19])
        if seconds is not None:
            return seconds, int(fraction) * 1000
    seconds, micros = divmod((parse_time(text) - _EPOCH) // _ONE_MICROSECOND, 1_000_000)
    return seconds, micros * 1000


@functools.lru_cache(maxsize=4096)
def _prefix_seconds(prefix: str) -> int | None:
    """Seconds since 1970 of `YYYY-MM-DDTHH:MM:SS` in UTC (None: not of that form; a date
    that does not exist raises ValueError, as `parse_time` does)."""
    if not _SECOND_PREFIX.fullmatch(prefix):
        return None
    return (parse_time(prefix + "Z") - _EPOCH) // timedelta(seconds=1)
