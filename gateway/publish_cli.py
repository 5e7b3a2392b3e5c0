"""`jetgate publish`: publish events through the gateway's gRPC API, from the command line.

Through the API, not straight into NATS, so validation, routing, tracing and auth apply as
they do to every client. Two forms:

- one event: `jetgate publish OrderPlaced --key o-42 --json '{"orderId": "o-42"}'
  [--id ID] [--header k=v ...] [--expect-last-key-seq N]`: a `Publish`;
- many: JSON lines on stdin, sent in batches of `--batch` entries on one `PublishStream`.
  A line is an object with `payload` (the event in protobuf's JSON mapping) and optional
  `type` (else TYPE), `key` (else `--key`), `id`, `source`, `time` and `headers` (merged over
  `--header`): exactly what `jetgate events --json` prints, so its output publishes again
  (other keys, such as `sequence`, are ignored).

TYPE is a full proto name or a simple name only one registered type has; the types come
from the gateway configuration (`--config`, as `jetgate decode`), which turns the JSON into
the typed message. The gateway's address: `--gateway`, else `JETGATE_GATEWAY`, else the
configuration's `listen`.

Security, as `jetgate.client.ConnectionSettings` (the client's own type: the same checks):
`--tls-ca FILE` (or `--tls` for the system's roots) for TLS, with `--tls-cert` and
`--tls-key` for mTLS, `--tls-server-name` to check the certificate against another name. A
bearer token comes from `--token-file FILE` or the `JETGATE_GATEWAY_TOKEN` variable, never
from a flag's value (any local user can read command lines), and is sent in plaintext only
to a loopback address.

With stdin, stderr a terminal and stdout not (results to a file), a live count of the
events sent and refused shows on stderr (rich).

Output, one JSON object per line on stdout: the result of each event (`event_id`,
`stream`, `subject`, `sequence`, `duplicate`; with stdin also `line`), or for a refused one
`line` and `error` (`code`, `message`, `details`: the google.rpc.Status details from the
`grpc-status-details-bin` trailer or the batch result, e.g. a BadRequest's field violations
or a SequenceConflict's expected and actual sequence). A single refused event is one line
on stderr instead. Exit codes (gateway/terminal.py): 0 every event stored; 1 the gateway
unreachable or failing (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ...: retrying
with the same ids is safe); 2 a bad flag, TYPE or configuration; 3 an event refused
(INVALID_ARGUMENT, FAILED_PRECONDITION, ...; with stdin: any line refused or unreadable,
the others are still published).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import any_pb2, json_format
from google.rpc import status_pb2
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from gateway.config import load_config
from gateway.decoding import DEFAULT_CONFIG, Decoder, add_config_argument
from gateway.terminal import Rejected, UsageError, report
from jetgate import processes, wire
from jetgate.client.connection import (
    TOKEN_VARIABLE,
    ConnectionSettings,
    Metadata,
    TlsSettings,
    TokenProvider,
    token_file,
)
from jetgate.errors import StartupError
from jetgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc

# Codes that say "this event is refused as it is"; any other code is the gateway (or the
# way to it) failing, and the same request may succeed later.
REFUSED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.ABORTED,
    }
)
STATUS_DETAILS = "grpc-status-details-bin"
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def add_command(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `publish` with `add_parser` (a subparsers action's)."""
    text = "publish events through the gateway's gRPC API (one, or JSON lines on stdin)"
    parser = add_parser(
        "publish",
        allow_abbrev=False,  # `--token x` must not pass for --token-file
        help=text,
        description=text,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        '  jetgate publish OrderPlaced --key o-42 --json \'{"orderId": "o-42"}\'\n'
        '  jetgate publish OrderShipped --key o-42 --json \'{"orderId": "o-42"}\' '
        "--expect-last-key-seq 2\n"
        "  jetgate events OLD --json | jetgate publish          # publish them again\n\n"
        "exit codes: 0 stored, 1 gateway unreachable or failing (retry), 2 a bad flag, "
        "TYPE or configuration, 3 an event refused",
    )
    parser.add_argument(
        "type",
        nargs="?",
        metavar="TYPE",
        help="the event type (full proto name or unique simple name); with stdin: for "
        "lines without `type`",
    )
    parser.add_argument("--key", metavar="K", help="the event's key (with stdin: the default)")
    parser.add_argument(
        "--json",
        dest="payload",
        metavar="JSON",
        help="the event in protobuf's JSON mapping; without it: JSON lines on stdin",
    )
    parser.add_argument("--id", default="", help="the event id (default: the gateway makes one)")
    parser.add_argument("--source", default="", help="ce-source (default: the gateway's)")
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="K=V",
        help="a user header (repeatable)",
    )
    parser.add_argument(
        "--expect-last-key-seq",
        type=int,
        metavar="N",
        help="store only if the key's last event has sequence N (0: none yet)",
    )
    parser.add_argument(
        "--batch", type=int, default=100, metavar="N", help="stdin: events per batch (1..1000)"
    )
    parser.add_argument(
        "--gateway",
        metavar="HOST:PORT",
        help=f"the gateway [default: {processes.GATEWAY_ADDRESS}, else the config's listen]",
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="deadline of each call"
    )
    security = parser.add_argument_group("security (docs/security.md)")
    security.add_argument("--tls", action="store_true", help="TLS, trusting the system's CAs")
    security.add_argument("--tls-ca", metavar="FILE", help="TLS, trusting this CA (PEM)")
    security.add_argument("--tls-cert", metavar="FILE", help="mTLS: the client certificate chain")
    security.add_argument("--tls-key", metavar="FILE", help="mTLS: the client certificate's key")
    security.add_argument(
        "--tls-server-name", metavar="NAME", help="check the gateway's certificate for NAME"
    )
    security.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"a file holding the bearer token [default: the {TOKEN_VARIABLE} variable]",
    )
    add_config_argument(parser)
    parser.set_defaults(operator_command=run)


def run(args: argparse.Namespace) -> int:
    """Run a parsed `jetgate publish`; returns the exit code."""
    try:
        return asyncio.run(_publish(args))
    except Exception as exc:  # one line, an exit code, never a traceback
        return report("publish", exc)


async def _publish(args: argparse.Namespace) -> int:
    path: Path | None = args.config
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    config = load_config(path, env=os.environ)
    decoder = Decoder.from_config(config)
    headers = _headers(args.header)
    address = args.gateway or os.environ.get(processes.GATEWAY_ADDRESS) or config.listen
    if not 1 <= args.batch <= 1000:
        raise UsageError("--batch must be within 1..1000")
    entry = None
    if args.payload is not None:
        if args.type is None or args.key is None:
            raise UsageError("--json needs TYPE and --key")
        line = {"type": args.type, "key": args.key, "payload": _json(args.payload, "--json")}
        entry = publish_request(decoder, line, args, headers)
    connection = connection_settings(args, address, os.environ)
    try:
        channel = connection.channel(address)
        metadata = await connection.metadata()
    except OSError as exc:
        raise UsageError(f"{exc.filename}: cannot be read ({exc.strerror})") from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    async with channel:
        stub = gateway_pb2_grpc.EventGatewayStub(channel)
        if entry is not None:
            return await _one(stub, entry, args.timeout, address, metadata)
        return await _many(stub, decoder, args, headers, address, metadata)


def connection_settings(
    args: argparse.Namespace, address: str, env: Mapping[str, str]
) -> ConnectionSettings:
    """The client's connection settings from the security flags and the environment."""
    tls = None
    if args.tls or args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name:
        try:
            tls = TlsSettings(
                ca_file=args.tls_ca or "",
                cert_file=args.tls_cert or "",
                key_file=args.tls_key or "",
                server_name=args.tls_server_name or "",
            )
        except ValueError as exc:
            raise UsageError(f"--tls-cert and --tls-key: {exc}") from None
    token: str | TokenProvider | None = None
    if args.token_file:
        token = token_file(args.token_file)
    elif env.get(TOKEN_VARIABLE):
        token = env[TOKEN_VARIABLE].strip()
    try:
        return ConnectionSettings(addresses=(address,), tls=tls, token=token)
    except ValueError as exc:
        raise UsageError(f"{exc}") from None


async def _one(
    stub: gateway_pb2_grpc.EventGatewayAsyncStub,
    entry: gateway_pb2.PublishRequest,
    deadline: float,
    address: str,
    metadata: Metadata,
) -> int:
    try:
        reply = await stub.Publish(entry, timeout=deadline, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        status = _status_of(exc)
        message = f"{_code_name(status.code)}: {status.message}{_details_text(status)}"
        if exc.code() in REFUSED:
            raise Rejected(message) from None
        raise StartupError(f"gateway {address}: {message}") from None
    print(json.dumps(_reply_row(reply)))
    return 0


async def _many(
    stub: gateway_pb2_grpc.EventGatewayAsyncStub,
    decoder: Decoder,
    args: argparse.Namespace,
    headers: Mapping[str, str],
    address: str,
    metadata: Metadata,
) -> int:
    refused = 0
    sent: asyncio.Queue[list[int] | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[gateway_pb2.PublishBatchRequest]:
        nonlocal refused
        numbers: list[int] = []
        entries: list[gateway_pb2.PublishRequest] = []
        number = 0
        while text := await asyncio.to_thread(sys.stdin.readline):
            number += 1
            if not text.strip():
                continue
            try:
                entries.append(publish_request(decoder, _json(text, "line"), args, headers))
                numbers.append(number)
            except (UsageError, Rejected) as exc:
                refused += 1
                error = {"code": "INVALID_ARGUMENT", "message": str(exc), "details": []}
                _print_row({"line": number, "error": error})
            if len(entries) == args.batch:
                await sent.put(numbers)
                yield gateway_pb2.PublishBatchRequest(entries=entries)
                numbers, entries = [], []
        if entries:
            await sent.put(numbers)
            yield gateway_pb2.PublishBatchRequest(entries=entries)
        await sent.put(None)

    progress = _progress()
    task = progress.add_task("publishing", total=None, refused=0) if progress else None
    try:
        if progress is not None:
            progress.start()
        async for response in stub.PublishStream(requests(), metadata=metadata):
            numbers = await sent.get()
            assert numbers is not None  # one response per request, in order
            for number, result in zip(numbers, response.results, strict=True):
                if result.HasField("ok"):
                    _print_row({"line": number, **_reply_row(result.ok)})
                else:
                    refused += 1
                    _print_row({"line": number, "error": _status_row(result.error)})
            if progress is not None and task is not None:
                progress.update(task, advance=len(numbers), refused=refused)
    except grpc.aio.AioRpcError as exc:
        status = _status_of(exc)
        raise StartupError(
            f"gateway {address}: {_code_name(status.code)}: {status.message}{_details_text(status)}"
        ) from None
    finally:
        if progress is not None:
            progress.stop()
    if refused:
        print(f"jetgate publish: {refused} events refused (see their lines)", file=sys.stderr)
        return Rejected.exit_code
    return 0


def _progress() -> Progress | None:
    """A live count on stderr for long input, when stderr is a terminal and the results go
    elsewhere (`jetgate publish < events.jsonl > results.jsonl`); on a terminal stdout the
    results themselves show the progress."""
    if not sys.stderr.isatty() or sys.stdout.isatty():
        return None
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.completed} events sent, {task.fields[refused]} refused"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        redirect_stdout=False,  # the results stay on stdout, where they were sent
        redirect_stderr=False,
    )


def publish_request(
    decoder: Decoder,
    line: Mapping[str, Any],
    args: argparse.Namespace,
    headers: Mapping[str, str],
) -> gateway_pb2.PublishRequest:
    """The request for one event given as a `jetgate events --json` style object."""
    if not isinstance(line, Mapping):
        raise Rejected("not a JSON object")
    type_name = line.get("type") or args.type
    key = line.get("key") or args.key
    payload = line.get("payload")
    if not type_name:
        raise UsageError("no event type: give TYPE or a `type` in each line")
    if key is None:
        raise Rejected("no key: give --key or a `key` in each line")
    if not isinstance(payload, dict):
        raise Rejected("`payload` must be a JSON object (the event in protobuf's JSON mapping)")
    full_name = decoder.type_named(str(type_name))
    message = decoder.registry.message_class(full_name)()
    try:
        json_format.ParseDict(payload, message)
    except json_format.ParseError as exc:
        raise Rejected(f"payload is not a {full_name}: {exc}") from None
    packed = any_pb2.Any()
    packed.Pack(message)
    event = event_pb2.Event(
        id=str(line.get("id") or args.id),
        source=str(line.get("source") or args.source),
        key=str(key),
        payload=packed,
        headers={**headers, **{str(k): str(v) for k, v in (line.get("headers") or {}).items()}},
    )
    if moment := line.get("time"):
        try:
            event.time.FromDatetime(wire.parse_time(str(moment)))
        except ValueError:
            raise Rejected(f"time {moment!r} is not an RFC 3339 time") from None
    precondition = None
    if args.expect_last_key_seq is not None:
        precondition = event_pb2.Precondition(expected_last_key_sequence=args.expect_last_key_seq)
    return gateway_pb2.PublishRequest(event=event, precondition=precondition)


def _headers(items: Iterable[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--header {item!r}: use NAME=VALUE")
        headers[name] = value
    return headers


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        error = UsageError if what == "--json" else Rejected
        raise error(f"{what} is not JSON: {exc}") from None


def _reply_row(reply: gateway_pb2.PublishResponse) -> dict[str, Any]:
    return {
        "event_id": reply.event_id,
        "stream": reply.stream,
        "subject": reply.subject,
        "sequence": reply.sequence,
        "duplicate": reply.duplicate,
    }


def _status_of(exc: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc.Status of a failed call: the trailer's when sent, else code + details."""
    for key, value in exc.trailing_metadata() or ():
        if key == STATUS_DETAILS and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a broken trailer: fall back to the plain status
                break
    return status_pb2.Status(code=exc.code().value[0], message=exc.details() or "")


def _status_row(status: status_pb2.Status) -> dict[str, Any]:
    details = json_format.MessageToDict(status).get("details", [])
    return {"code": _code_name(status.code), "message": status.message, "details": details}


def _details_text(status: status_pb2.Status) -> str:
    details = _status_row(status)["details"]
    return f" details: {json.dumps(details, separators=(',', ':'))}" if details else ""


def _code_name(code: int) -> str:
    found = _CODES.get(code)
    return found.name if found is not None else str(code)


def _print_row(row: Mapping[str, Any]) -> None:
    print(json.dumps(row, ensure_ascii=False), flush=True)
