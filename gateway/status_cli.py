"""`jetgate streams` and `jetgate groups`: what an operator checks first, as tables.

- `streams`: every stream of the account: messages, bytes, first and last stored time,
  replicas, and the event types jetgate routes to it (the stream's `jetgate.event_types`
  metadata, written by the gateway).
- `groups`: every consumer group (durable consumer) of every stream, or of `--stream S`:
  pending (stored, not yet delivered), ack pending (delivered, not yet settled),
  redelivered, dead letters (messages of the group in stream `DLQ`), and pulls waiting
  (pull requests of the group's workers waiting for events: JetStream does not know a
  group's members, but an idle worker always has one).

On a terminal they are tables (rich; colour unless `NO_COLOR`), off one plain aligned
columns without colour, and with `--json` one JSON object per line with stable keys (sizes
in bytes, times RFC 3339, absent times `null`). NATS URL, credentials and TLS as the
gateway's (gateway/operator_nats.py: `--nats-*` flags, `JETGATE_NATS_*`, the configuration).
Exit codes (gateway/terminal.py): 0 shown, 1 NATS unreachable, refusing the credentials or
the JetStream API, or no such stream, 2 a bad flag or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError
from rich import box
from rich.console import Console
from rich.table import Table

from consumers import deadletter
from gateway import operator_nats
from gateway.terminal import report, use_colour
from jetgate import wire
from jetgate.errors import StartupError

Row = dict[str, Any]


async def stream_rows(nc: NATS) -> list[Row]:
    """One row per stream of the account, by name."""
    js = nc.jetstream()
    rows = []
    for info in sorted(await js.streams_info(), key=lambda i: i.config.name or ""):
        name = info.config.name or ""
        state = info.state
        types = (info.config.metadata or {}).get(wire.EVENT_TYPES_METADATA, "")
        rows.append(
            {
                "stream": name,
                "messages": state.messages,
                "bytes": state.bytes,
                "first": await _stored_time(js, name, state.first_seq, state.messages),
                "last": await _stored_time(js, name, state.last_seq, state.messages),
                "replicas": info.config.num_replicas or 1,
                "event_types": [t for t in types.split(",") if t],
            }
        )
    return rows


async def _stored_time(js: Any, stream: str, sequence: int, messages: int) -> str | None:
    if not messages or not sequence:
        return None
    try:
        stored = await js.get_msg(stream, sequence)
    except NotFoundError:  # deleted between the info and the get
        return None
    return wire.format_time(stored.time) if stored.time else None


async def group_rows(nc: NATS, only_stream: str | None) -> list[Row]:
    """One row per durable consumer (group), by stream and name."""
    js = nc.jetstream()
    if only_stream is not None:
        try:
            streams = [only_stream] if await js.stream_info(only_stream) else []
        except NotFoundError:
            raise StartupError(f"no stream {only_stream!r}") from None
    else:
        streams = sorted(i.config.name or "" for i in await js.streams_info())
    rows = []
    for stream in streams:
        for info in sorted(await js.consumers_info(stream), key=lambda i: i.name):
            if not info.config.durable_name:
                continue  # ephemeral: someone's `jetgate events` or `nats sub`, not a group
            rows.append(
                {
                    "group": info.name,
                    "stream": stream,
                    "pending": info.num_pending or 0,
                    "ack_pending": info.num_ack_pending or 0,
                    "redelivered": info.num_redelivered or 0,
                    "dead_letters": await deadletter.count(js, info.name),
                    "pulls_waiting": info.num_waiting or 0,
                }
            )
    return rows


def print_rows(rows: Sequence[Row], columns: Sequence[str], *, as_json: bool, title: str) -> None:
    """`rows` as JSON lines, a table on a terminal, or plain aligned columns."""
    if as_json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return
    terminal = sys.stdout.isatty()
    colour = use_colour(sys.stdout)
    table = Table(
        title=title if terminal else None,
        box=box.ROUNDED if terminal else None,
        show_edge=terminal,
        pad_edge=terminal,
        header_style="bold" if colour else "",
        title_style="bold" if colour else "",
    )
    for column in columns:
        numeric = bool(rows) and isinstance(rows[0][column], int)
        table.add_column(
            _HEADINGS.get(column, column.upper()),
            justify="right" if numeric else "left",
            no_wrap=column != "event_types",  # the one long cell wraps on a terminal
            overflow="fold",
        )
    for row in rows:
        table.add_row(*(_cell(c, row[c]) for c in columns))
    if terminal:
        Console(no_color=not colour, highlight=False).print(table)
        return
    # Off a terminal: plain columns, no colour, no line cut, no trailing blanks (for awk).
    console = Console(file=io.StringIO(), no_color=True, highlight=False, width=100_000)
    with console.capture() as captured:
        console.print(table)
    for line in captured.get().splitlines():
        print(line.rstrip())


# Short headings keep a table within a terminal's width; --json keeps the full keys.
_HEADINGS = {
    "messages": "MSGS",
    "first": "FIRST (UTC)",
    "last": "LAST (UTC)",
    "event_types": "EVENT TYPES",
    "ack_pending": "ACK PENDING",
    "dead_letters": "DEAD LETTERS",
    "pulls_waiting": "PULLS WAITING",
}


def _cell(column: str, value: object) -> str:
    if value is None:
        return "-"
    if column == "bytes" and isinstance(value, int):
        return _size(value)
    if column in ("first", "last") and isinstance(value, str):
        return value[:19].replace("T", " ")  # to the second
    if isinstance(value, list):  # event types: their simple names read best in a table
        return ", ".join(wire.type_name(str(v)) for v in value) or "-"
    return str(value)


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"


def add_commands(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `streams` and `groups` with `add_parser` (a subparsers action's)."""
    for name, text, example in (
        ("streams", "a table of the streams: messages, bytes, times, types", "jetgate streams"),
        (
            "groups",
            "a table of the consumer groups: pending, ack pending, redelivered, dead letters",
            "jetgate groups --stream ORDERS --json",
        ),
    ):
        parser = add_parser(
            name,
            help=text,
            description=text,
            allow_abbrev=False,  # `--nats-password X` must not pass for --nats-password-file
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=f"example:\n  {example}\n\nexit codes: 0 shown, 1 NATS unreachable or "
            "refusing the credentials, or no such stream, 2 a bad flag or configuration",
        )
        if name == "groups":
            parser.add_argument("--stream", metavar="S", help="only the groups of stream S")
        parser.add_argument("--json", action="store_true", help="one JSON object per line")
        operator_nats.add_arguments(parser)
        parser.add_argument(
            "--config",
            type=Path,
            metavar="FILE",
            help="the gateway's TOML file, for its NATS settings (default: jetgate.toml if "
            "present)",
        )
        parser.set_defaults(operator_command=run)


def run(args: argparse.Namespace) -> int:
    """Run a parsed `jetgate streams` or `jetgate groups`; returns the exit code."""
    try:
        asyncio.run(_show(args))
    except BrokenPipeError:
        sys.stderr.close()
        return 0
    except Exception as exc:  # one line, an exit code, never a traceback
        return report(args.command, exc)
    return 0


async def _show(args: argparse.Namespace) -> None:
    nc, denied = await operator_nats.connect(operator_nats.options(args), "jetgate-status")
    try:
        await operator_nats.unless_denied(_print(nc, args), denied)
    finally:
        await nc.close()


async def _print(nc: NATS, args: argparse.Namespace) -> None:
    if args.command == "streams":
        rows = await stream_rows(nc)
        columns = ["stream", "messages", "bytes", "first", "last", "replicas", "event_types"]
        print_rows(rows, columns, as_json=args.json, title="Streams")
    else:
        rows = await group_rows(nc, args.stream)
        columns = [
            "group",
            "stream",
            "pending",
            "ack_pending",
            "redelivered",
            "dead_letters",
            "pulls_waiting",
        ]
        print_rows(rows, columns, as_json=args.json, title="Consumer groups")
    if not rows and not args.json:
        print(f"no {args.command}", file=sys.stderr)
