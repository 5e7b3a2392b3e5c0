"""`jetgate events STREAM`: the stored events of a stream, decoded, straight from NATS.

It reads with an ephemeral ordered consumer (nats-py's `ordered_consumer`: push, no acks,
in memory, recreated from the next sequence after a gap, gone a few seconds after the
command ends), so it changes nothing and needs no group. Which events:
- `--key K`: every event of one key (the aggregate) in every route prefix the
  configuration sends to STREAM (`<prefix>.*.K`); `--subject FILTER`: any subject filter;
  neither: the whole stream.
- `--from SEQ` (a stream sequence) or `--from TIME` (RFC 3339, stored time), or `--last N`
  (the last N that match); neither: from the first.
- Without `--follow` it stops once it has printed what was stored when it started (each
  message says how many more match: `num_pending`); with `--follow` it goes on with events
  stored later until SIGINT/SIGTERM (exit 0).

`--last N` with a filter reads the matching events from the first and prints those with
fewer than N after them (JetStream has no "last N" start); without one it starts at the
stream's last sequence - N + 1.

Each event is one line: sequence, stored time, subject, type, key, id, trace id, user
headers, payload as JSON (protobuf JSON mapping); `--json` prints the same as one JSON
object per line (`sequence`, `stored`, `time`, `subject`, `type`, `key`, `id`, `source`,
`trace_id`, `headers`, `payload`, and `error` when the payload does not decode: the event is
still shown, with `payload: null`). Header values come through `consumers.headers.text_headers`
(what was published, byte for byte). Types and routes come from the gateway configuration
(`--config`, as `jetgate decode`); NATS URL, credentials and TLS as the gateway's
(gateway/operator_nats.py: `--nats-*` flags, `JETGATE_NATS_*`, the configuration;
credentials never printed). Exit codes (gateway/terminal.py): 0 done, 1 NATS unreachable,
refusing the credentials or the JetStream API, or no such stream, 2 a bad flag or
configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from consumers.headers import text_headers
from gateway import operator_nats
from gateway.decoding import Decoder, add_config_argument, as_json_value
from gateway.terminal import UsageError, paint, report, use_colour
from jetgate import wire
from jetgate.errors import JetgateError, StartupError

# How long to wait for the first message when the consumer says some are pending.
READ_TIMEOUT = 30.0  # s


@dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    """Which events to read: subject filters (empty: all) and where to start."""

    filters: tuple[str, ...] = ()
    start_sequence: int | None = None
    start_time: datetime | None = None
    last: int | None = None


def selection(args: argparse.Namespace, decoder: Decoder, stream: str) -> Selection:
    """The selection of parsed `jetgate events` arguments; UsageError when impossible."""
    filters: tuple[str, ...] = ()
    if args.key is not None:
        if (problem := wire.key_problem(args.key)) is not None:
            raise UsageError(f"--key: {problem}")
        prefixes = sorted(decoder.prefixes_of_stream(stream))
        if not prefixes:
            raise UsageError(
                f"no route of the configuration stores events in stream {stream}, so the "
                "subjects of a key are unknown: use --subject FILTER (or --config FILE)"
            )
        filters = tuple(wire.key_filter(p, args.key) for p in prefixes)
    elif args.subject is not None:
        try:
            wire.filter_tokens(args.subject)
        except ValueError as exc:
            raise UsageError(f"--subject: {exc}") from None
        filters = (args.subject,)
    start = args.start
    if start is None:
        return Selection(filters=filters, last=args.last)
    if start.isdigit():
        return Selection(filters=filters, start_sequence=max(int(start), 1))
    try:
        moment = wire.parse_time(start)
    except ValueError:
        raise UsageError(
            f"--from {start!r}: use a stream sequence or an RFC 3339 time "
            "(e.g. 2026-11-30T06:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise UsageError(f"--from {start!r}: give the time zone (Z or +01:00)")
    return Selection(filters=filters, start_time=moment)


def event_row(msg: Msg, decoder: Decoder) -> dict[str, Any]:
    """One stored message as the JSON object `--json` prints (payload decoded if it can)."""
    headers = text_headers(msg.headers)
    metadata = msg.metadata
    row: dict[str, Any] = {
        "sequence": metadata.sequence.stream,
        "stored": wire.format_time(metadata.timestamp),
        "time": headers.get(wire.CE_TIME, ""),
        "subject": msg.subject,
        "type": headers.get(wire.CE_TYPE, ""),
        "key": headers.get(wire.CE_SUBJECT) or msg.subject.rsplit(".", 1)[-1],
        "id": headers.get(wire.CE_ID) or headers.get(wire.MSG_ID, ""),
        "source": headers.get(wire.CE_SOURCE, ""),
        "trace_id": _trace_id(headers.get("traceparent", "")),
        "headers": {k: v for k, v in headers.items() if not wire.is_reserved_header(k)},
        "payload": None,
    }
    try:
        full_name = (
            decoder.type_named(row["type"])
            if row["type"]
            else decoder.type_for_subject(msg.subject)
        )
        row["payload"] = as_json_value(decoder.decode(full_name, msg.data))
    except JetgateError as exc:
        row["error"] = str(exc)
    return row


def _trace_id(traceparent: str) -> str:
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 else ""


def format_line(row: dict[str, Any], *, colour: bool) -> str:
    """The one-line text form of an event row."""
    fields = [
        paint(f"#{row['sequence']}", "2", colour=colour),
        row["stored"],
        row["subject"],
        paint(wire.type_name(row["type"]) or "?", "1;36", colour=colour),
        f"id={row['id']}",
    ]
    if row["trace_id"]:
        fields.append(f"trace={row['trace_id']}")
    fields.extend(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in row["headers"].items())
    if "error" in row:
        fields.append(paint(f"! {row['error']}", "31", colour=colour))
    else:
        fields.append(json.dumps(row["payload"], ensure_ascii=False, separators=(",", ":")))
    return "  ".join(fields)


async def read_events(
    nc: NATS,
    stream: str,
    chosen: Selection,
    *,
    follow: bool,
    stop: asyncio.Event,
    emit: Callable[[Msg], None],
) -> int:
    """Hand every selected stored event of `stream` to `emit`, in order; return how many.

    Without `follow`, returns once the events stored at the start are read; with it, when
    `stop` is set. Raises StartupError when the stream does not exist.
    """
    js = nc.jetstream()
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        raise StartupError(f"no stream {stream!r}") from None
    # One filter: the subscription's own; several: `filter_subjects` (nats-server >= 2.10).
    config = api.ConsumerConfig()
    if len(chosen.filters) > 1:
        config.filter_subjects = list(chosen.filters)
    subject = chosen.filters[0] if chosen.filters else ">"
    policy = api.DeliverPolicy.ALL
    if chosen.start_sequence is not None:
        policy = api.DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = chosen.start_sequence
    elif chosen.start_time is not None:
        policy = api.DeliverPolicy.BY_START_TIME
        config.opt_start_time = chosen.start_time
    elif chosen.last is not None and not chosen.filters:
        policy = api.DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = max(info.state.first_seq, info.state.last_seq - chosen.last + 1, 1)
    sub = await js.subscribe(
        subject, stream=stream, ordered_consumer=True, deliver_policy=policy, config=config
    )
    shown = 0
    try:
        consumer = await sub.consumer_info()
        delivered = consumer.delivered.consumer_seq if consumer.delivered else 0
        if not follow and consumer.num_pending == 0 and delivered == 0:
            return 0
        while not stop.is_set():
            msg = await _next(sub, stop, None if follow else READ_TIMEOUT)
            if msg is None:
                break
            pending = msg.metadata.num_pending
            if chosen.last is None or pending < chosen.last:
                emit(msg)
                shown += 1
            if not follow and pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return shown


async def _next(
    sub: JetStreamContext.PushSubscription, stop: asyncio.Event, wait_at_most: float | None
) -> Msg | None:
    """The next message, or None when `stop` is set first (or `wait_at_most` s pass)."""
    getting = asyncio.ensure_future(sub.next_msg(timeout=wait_at_most))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not getting.done():
        getting.cancel()
        return None
    try:
        msg: Msg = getting.result()
    except TimeoutError:
        return None
    return msg


def add_command(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `events` with `add_parser` (a subparsers action's)."""
    text = "print a stream's stored events, decoded (and, with --follow, new ones)"
    parser = add_parser(
        "events",
        help=text,
        description=text,
        allow_abbrev=False,  # `--nats-password SECRET` must not pass for --nats-password-file
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  jetgate events ORDERS --key o-42\n"
        "  jetgate events ORDERS --subject 'orders.OrderPlaced.>' --last 10 --json\n"
        "  jetgate events ORDERS --from 2026-11-30T06:00:00Z --follow\n\n"
        "exit codes: 0 done (or stopped by SIGINT/SIGTERM with --follow), 1 NATS "
        "unreachable or refusing the credentials, or no such stream, 2 a bad flag or "
        "configuration",
    )
    parser.add_argument("stream", metavar="STREAM", help="the stream, e.g. ORDERS")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--key", metavar="K", help="the events of one key (all its types)")
    which.add_argument("--subject", metavar="FILTER", help="a subject filter, e.g. orders.*.o-42")
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--from",
        dest="start",
        metavar="SEQ|TIME",
        help="start at a stream sequence or an RFC 3339 time (default: the first event)",
    )
    start.add_argument("--last", type=_positive, metavar="N", help="only the last N events")
    parser.add_argument("--follow", action="store_true", help="go on with new events")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    operator_nats.add_arguments(parser)
    add_config_argument(parser)
    parser.set_defaults(operator_command=run)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return int(text)


def run(args: argparse.Namespace) -> int:
    """Run a parsed `jetgate events`; returns the exit code."""
    try:
        asyncio.run(_events(args))
    except BrokenPipeError:  # `jetgate events ... | head`: the reader has what it wanted
        sys.stderr.close()
        return 0
    except Exception as exc:  # one line, an exit code, never a traceback
        return report("events", exc)
    return 0


async def _events(args: argparse.Namespace) -> None:
    config = operator_nats.load(args)
    decoder = Decoder.from_config(config)
    chosen = selection(args, decoder, args.stream)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nc, denied = await operator_nats.connect(config.nats_options(), "jetgate-events")
    colour = not args.json and use_colour(sys.stdout)

    def emit(msg: Msg) -> None:
        row = event_row(msg, decoder)
        line = json.dumps(row, ensure_ascii=False) if args.json else format_line(row, colour=colour)
        print(line, flush=True)

    try:
        shown = await operator_nats.unless_denied(
            read_events(nc, args.stream, chosen, follow=args.follow, stop=stop, emit=emit), denied
        )
        if not shown and not args.follow:
            print(f"no events in {args.stream} match", file=sys.stderr)
    finally:
        await nc.close()
