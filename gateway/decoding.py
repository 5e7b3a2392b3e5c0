"""Stored payloads made readable: which type a subject holds, and the payload as JSON.

`jetgate decode` reads ONE payload (protobuf binary, as stored) on stdin and prints it as
JSON (protobuf's canonical JSON mapping: lowerCamelCase names, 64-bit integers as strings,
enums by name, default values left out). It is made for natscli's `--translate`, which
runs a command per message with the payload on stdin and the template functions
`{{Subject}}` and `{{Stream}}` (natscli v0.5.0, cli/filter_data_through_cmd.go):

    nats stream get ORDERS --last-for orders.OrderPlaced.o-42 \\
        --translate 'jetgate decode --subject {{Subject}}'

The type comes from `--type` (a full proto name, or a simple name that only one registered
type has) or from `--subject`: `<route prefix>.<EventTypeName>.<key>`, which the routing
rules make unique (one prefix belongs to one stream, two types with one simple name never
share a prefix; gateway/routing.py). A dead letter's subject `dlq.<group>.<origin subject>`
decodes as its origin's type. Types and routes come from the gateway's own configuration
(`--config`, else `jetgate.toml` when present, and `JETGATE_*` variables such as
`JETGATE_TYPE_MODULES`), so `decode` always agrees with what the gateway accepts.

Fields the type does not know (a sender on a newer schema) have no place in the JSON
mapping: they are left out and a one-line note on stderr says how many bytes they took.
Exit codes (gateway/terminal.py): 0 decoded, 2 no type for the subject or `--type`, or a bad
configuration, 3 a payload that is not a valid message of its type; the error is one line
with the payload's size, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from gateway.config import GatewayConfig, load_config
from gateway.registry import PayloadError, TypeRegistry, UnknownTypeError
from gateway.routing import Router
from gateway.terminal import Rejected, UsageError, report
from jetgate import wire

DEFAULT_CONFIG = Path("jetgate.toml")


@dataclass(frozen=True, slots=True, kw_only=True)
class Decoder:
    """The registered types of a gateway configuration, found by name or by subject."""

    registry: TypeRegistry
    # (route prefix, simple type name) -> full proto name, for every routed type.
    by_subject: Mapping[tuple[str, str], str]
    # stream -> the route prefixes of the types stored in it.
    prefixes: Mapping[str, frozenset[str]]

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Decoder:
        """Load the types and routes of `config` (ConfigurationError when they are wrong)."""
        registry = TypeRegistry.load(config.type_modules, config.descriptor_sets)
        router = Router.build(config.routes, registry, config.streams)
        by_subject: dict[tuple[str, str], str] = {}
        prefixes: dict[str, set[str]] = {}
        for full_name in registry.names():
            if (route := router.route(full_name)) is not None:
                by_subject[(route.subject_prefix, wire.type_name(full_name))] = full_name
                prefixes.setdefault(route.stream, set()).add(route.subject_prefix)
        return cls(
            registry=registry,
            by_subject=by_subject,
            prefixes={stream: frozenset(p) for stream, p in prefixes.items()},
        )

    def prefixes_of_stream(self, stream: str) -> frozenset[str]:
        """The route prefixes of the types stored in `stream` (empty: none routed there)."""
        return self.prefixes.get(stream, frozenset())

    def type_for_subject(self, subject: str) -> str:
        """The full name of the type stored on `subject`; UsageError when no route makes it."""
        tokens = subject.split(".")
        if len(tokens) >= 3:
            found = self.by_subject.get((".".join(tokens[:-2]), tokens[-2]))
            if found is not None:
                return found
        if len(tokens) >= 5 and tokens[0] == wire.DEAD_LETTER_PREFIX:
            try:
                return self.type_for_subject(".".join(tokens[2:]))
            except UsageError:
                pass
        raise UsageError(
            f"no registered event type is stored on subject {subject!r} "
            f"(<route prefix>.<EventTypeName>.<key>; {self._known()})"
        )

    def type_named(self, name: str) -> str:
        """The full name of a type given by full or (unique) simple name; UsageError if none."""
        if name in self.registry:
            return name
        matches = sorted(n for n in self.registry.names() if wire.type_name(n) == name)
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise UsageError(f"type {name!r} is ambiguous: {', '.join(matches)}")
        raise UsageError(f"{name!r} is not a registered event type ({self._known()})")

    def decode(self, full_name: str, data: bytes) -> Message:
        """`data` parsed as `full_name`; Rejected (exit 3) when it is not a valid message."""
        try:
            return self.registry.parse(full_name, data)
        except PayloadError:
            raise Rejected(f"payload of {len(data)} bytes is not a valid {full_name}") from None
        except UnknownTypeError as exc:
            raise UsageError(str(exc)) from None

    def _known(self) -> str:
        if not len(self.registry):
            return (
                "no types are registered: pass --config FILE, run where jetgate.toml is, "
                "or set JETGATE_TYPE_MODULES / JETGATE_DESCRIPTOR_SETS"
            )
        prefixes = sorted({prefix for prefix, _ in self.by_subject})
        return f"{len(self.registry)} types registered, route prefixes: {', '.join(prefixes)}"


def as_json_value(message: Message) -> dict[str, Any]:
    """`message` in protobuf's JSON mapping, as a JSON-ready dict."""
    return json_format.MessageToDict(message)


def unknown_bytes(message: Message) -> int:
    """Bytes `message` holds in fields its type does not know (kept from parsing)."""
    known = type(message)()
    known.CopyFrom(message)
    known.DiscardUnknownFields()
    return message.ByteSize() - known.ByteSize()


def load_decoder(config_path: Path | None) -> Decoder:
    """The decoder of the gateway configuration at `config_path` (else ./jetgate.toml if any)
    with the `JETGATE_*` variables applied, as `jetgate serve` would read it."""
    if config_path is None and DEFAULT_CONFIG.is_file():
        config_path = DEFAULT_CONFIG
    return Decoder.from_config(load_config(config_path, env=os.environ))


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the gateway's TOML file, for its types and routes (default: jetgate.toml if "
        "present; JETGATE_TYPE_MODULES and JETGATE_DESCRIPTOR_SETS apply)",
    )


def add_command(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `decode` with `add_parser` (a subparsers action's)."""
    text = "print one stored payload (stdin) as JSON; made for the nats CLI's --translate"
    parser = add_parser(
        "decode",
        help=text,
        description=text,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  nats stream get ORDERS --last-for orders.OrderPlaced.o-42 \\\n"
        "      --translate 'jetgate decode --subject {{Subject}}'\n"
        "  jetgate decode --type OrderPlaced < payload.bin\n\n"
        "exit codes: 0 decoded, 2 no type for the subject or --type (or a bad config), "
        "3 the payload is not a valid message of its type",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--subject",
        help="the subject the payload is stored on: <route prefix>.<EventTypeName>.<key>",
    )
    which.add_argument(
        "--type", help="the event type: a full proto name, or a simple name only one type has"
    )
    add_config_argument(parser)
    parser.add_argument("--compact", action="store_true", help="JSON on one line")
    parser.set_defaults(operator_command=run)


def run(args: argparse.Namespace) -> int:
    """Run a parsed `jetgate decode`; returns the exit code."""
    try:
        data = sys.stdin.buffer.read()
        decoder = load_decoder(args.config)
        if args.type is not None:
            full_name = decoder.type_named(args.type)
        else:
            full_name = decoder.type_for_subject(args.subject)
        message = decoder.decode(full_name, data)
        indent = None if args.compact else 2
        print(json.dumps(as_json_value(message), indent=indent, ensure_ascii=False))
        if extra := unknown_bytes(message):
            print(
                f"jetgate decode: note: {extra} of {len(data)} bytes are fields "
                f"{full_name} does not know (a newer schema?), not shown",
                file=sys.stderr,
            )
    except Exception as exc:  # one line, an exit code, never a traceback
        return report("decode", exc)
    return 0
