"""`jetgate consume` and `jetgate dlq` (also `python -m consumers consume|dlq ...`).

`jetgate` (gateway/cli.py) adds these commands to its own parser with `add_commands()` and
runs them in-process with `run()`: same arguments, help, signals and exit codes as
`python -m consumers`.

- `jetgate consume MODULE:GROUP [--nats-url URL] [--concurrency N] [--ack-wait S]`: import
  MODULE, run the `ConsumerGroup` named GROUP in it until SIGINT/SIGTERM, drain (finish and
  acknowledge in-flight events), log the counts and exit 0. `--ack-wait` overrides the
  group's setting (and so the consumer's, for every worker of the group).
- `jetgate dlq list|redrive|purge --group G [--nats-url URL]`: show the group's dead
  letters, republish them to their origin subjects, or delete them. Redrive names on
  stderr each dead letter it keeps (see `consumers.deadletter`: a truncated one whose
  original is gone, or one too big to republish), goes on with the others, and then exits
  3 (`EXIT_REJECTED`, as the operator commands do for refused data) rather than 0: a
  script must not take "some kept" for "all redriven". When stderr is a terminal it shows
  its progress there (a rich progress bar, gone when done; colour unless `NO_COLOR`);
  otherwise its output is the plain lines only.

Telemetry: `consume` traces with the `OTEL_*` variables (service name: the group's; see
observability.setup) and installs its providers as OpenTelemetry's global ones, so that
handler code using the OpenTelemetry API (and instrumented clients, like the demo's gRPC
channel) joins the event's trace. `--metrics-listen HOST:PORT` serves Prometheus metrics;
the default, 127.0.0.1:9465, moves on to the next free port when taken (several workers on
one host), and so does a given port with `--metrics-port-tries N` (`jetgate up`'s workers);
the log says which port it took; '' turns it off.

Readiness: when `JETGATE_READY_FD` names an inherited file descriptor (a pipe), `consume`
writes `ready` to it once the worker pulls events, and closes it (`jetgate up` waits for
that before it prints its banner).

NATS (jetgate/nats_options.py): the URL (several: comma-separated) defaults to
`JETGATE_NATS_URL`, then `nats://127.0.0.1:4222`; credentials and TLS come from the
`JETGATE_NATS_*` variables (the gateway's settings of the same names) or the `--nats-*` flags
for the non-secret ones (file paths); a password or token only from its variable or a file,
never a flag (`ps` shows flags to every local user). Secrets are never printed
(`jetgate.urls.redact` on every message that could quote a URL). Wrong credentials or a
failed TLS handshake end the command at once with exit code 1 naming the cause; so does a
permission violation (the user may not use the JetStream API, or a subject the group needs)
before the worker is ready, or during `dlq`, instead of a wait for a timeout. Exit codes
(jetgate/errors.py, mapped in `main()` only): 0 after a clean stop, 2 for a configuration
error (a bad MODULE:GROUP, group settings JetStream refuses, a bad `--metrics-listen` or
`OTEL_*` value), 1 when start-up fails (NATS unreachable, the metrics port taken), 3 when
`dlq redrive` kept dead letters it could not redrive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from opentelemetry import metrics, trace
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import observability
from consumers import deadletter
from consumers.group import ConsumerGroup, GroupConfigError
from consumers.worker import Worker
from jetgate import errors, nats_options, processes
from jetgate.errors import ConfigurationError, JetgateError, StartupError
from jetgate.nats_options import NatsOptions, NatsRefused
from jetgate.urls import redact

log = logging.getLogger("jetgate.consumers")
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9465"
METRICS_PORT_TRIES = 100
CONNECT_TIMEOUT = 10.0  # s


class DeadLettersKept(JetgateError):
    """`dlq redrive` kept dead letters it could not redrive (exit code 3: data refused)."""

    exit_code = errors.EXIT_REJECTED


# The commands this module runs, for `jetgate` (gateway/cli.py) to hand over.
COMMANDS = ("consume", "dlq")


def add_commands(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `consume` and `dlq` with `add_parser` (a subparsers action's): `jetgate` and
    `python -m consumers` parse them alike."""
    text = "run a worker of a consumer group until SIGINT/SIGTERM, then drain"
    # No abbreviations: `--nats-password SECRET` must not pass for --nats-password-file.
    consume = add_parser("consume", help=text, description=text, allow_abbrev=False)
    consume.add_argument(
        "target",
        metavar="MODULE:GROUP",
        help="the ConsumerGroup named GROUP in Python module MODULE, e.g. consumers.demo:billing",
    )
    consume.add_argument(
        "--concurrency", type=int, metavar="N", help="events handled at once (per process)"
    )
    consume.add_argument(
        "--ack-wait",
        type=float,
        metavar="SECONDS",
        help="how long JetStream waits for an acknowledgement before redelivering "
        "(overrides the group's, for every worker of the group)",
    )
    consume.add_argument(
        "--metrics-listen",
        default=None,
        metavar="HOST:PORT",
        help=f"Prometheus endpoint (default {DEFAULT_METRICS_LISTEN} or next free; '': off)",
    )
    consume.add_argument(
        "--metrics-port-tries",
        type=int,
        default=None,
        metavar="N",
        help="when the metrics port is taken, try the next N-1 ports (default "
        f"{METRICS_PORT_TRIES} without --metrics-listen, 1 with it; jetgate up's workers "
        "pass it)",
    )
    text = "list, redrive or purge a group's dead letters (stream DLQ)"
    dlq = add_parser(
        "dlq",
        help=text,
        description=text,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  jetgate dlq redrive --group billing\n\n"
        "exit codes: 0 done, 1 NATS unreachable or refusing, 2 a bad flag or setting, "
        "3 redrive kept dead letters it could not redrive (named on stderr)",
    )
    dlq.add_argument(
        "action",
        choices=("list", "redrive", "purge"),
        help="list: show them; redrive: republish each to its origin subject; purge: delete",
    )
    dlq.add_argument("--group", required=True, help="the group whose dead letters to act on")
    dlq.add_argument("--json", action="store_true", help="list: one JSON object per line")
    for command in (consume, dlq):
        nats_options.add_flags(
            command, url_default=f"{processes.NATS_URL}, else {DEFAULT_NATS_URL}"
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jetgate", description="jetgate consumer groups")
    add_commands(parser.add_subparsers(dest="command", required=True).add_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m consumers`."""
    run(_parser().parse_args(argv))


def run(args: argparse.Namespace) -> None:
    """Run a parsed `consume` or `dlq` command (`jetgate consume|dlq` calls this too).

    Returns after a clean stop; raises SystemExit with the exit code otherwise.
    """
    observability.configure_logging(os.environ.get("JETGATE_LOG_LEVEL", "INFO"))
    try:
        _run(args)
    except Exception as exc:  # the one place exceptions become exit codes
        raise SystemExit(errors.report(exc, log)) from None


def nats_settings(args: argparse.Namespace, env: os._Environ[str] | dict[str, str]) -> NatsOptions:
    """The NATS options of a parsed command: its `--nats-*` flags, else `JETGATE_NATS_*`."""
    values: dict[str, object] = {
        s: env.get(nats_options.ENV_PREFIX + s.upper()) for s in nats_options.SETTINGS
    }
    for setting in nats_options.SETTINGS:
        if getattr(args, setting, None) is not None:
            values[setting] = getattr(args, setting)
    return nats_options.options(values)


def _run(args: argparse.Namespace) -> None:
    nats_opts = nats_settings(args, os.environ)
    if args.command == "consume":
        group = load_group(args.target)
        if args.ack_wait is not None:
            group = _replace(group, ack_wait=args.ack_wait)
        if args.concurrency is not None:
            group = _replace(group, concurrency=args.concurrency)
        telemetry = _telemetry(group.name, args.metrics_listen, args.metrics_port_tries)
        try:
            asyncio.run(_consume(group, nats_opts, telemetry))
        finally:
            telemetry.shutdown()  # exports the spans still buffered
    else:
        asyncio.run(_dead_letters(args.action, args.group, nats_opts, as_json=args.json))


def load_group(target: str) -> ConsumerGroup:
    """The `ConsumerGroup` named by `MODULE:GROUP`; exits 2 with the reason when there is none."""
    module_name, _, attribute = target.partition(":")
    try:
        group = getattr(importlib.import_module(module_name), attribute or "group")
    except (ImportError, AttributeError) as exc:
        _fail(2, f"cannot load {target!r}: {exc}")
    if not isinstance(group, ConsumerGroup):
        _fail(2, f"{target!r} is a {type(group).__name__}, not a ConsumerGroup")
    return group


def _telemetry(
    service: str, metrics_listen: str | None, port_tries: int | None
) -> observability.Telemetry:
    listen = DEFAULT_METRICS_LISTEN if metrics_listen is None else metrics_listen
    if port_tries is None:
        port_tries = METRICS_PORT_TRIES if metrics_listen is None else 1
    try:
        telemetry = observability.configure(
            service, metrics_listen=listen, metrics_port_tries=port_tries
        )
    except ConfigurationError:
        raise
    except ValueError as exc:  # not HOST:PORT
        _fail(2, f"--metrics-listen {listen!r}: {exc}")
    except OSError as exc:  # taken
        _fail(1, f"--metrics-listen {listen}: {exc}")
    if telemetry.tracer_provider is not None:
        trace.set_tracer_provider(telemetry.tracer_provider)
    if telemetry.meter_provider is not None:
        metrics.set_meter_provider(telemetry.meter_provider)
    if (server := telemetry.metrics_server) is not None:
        wanted = int(listen.rpartition(":")[2])
        moved = f" ({listen} was taken)" if wanted and server.port != wanted else ""
        log.info("group %s: Prometheus metrics at %s%s", service, server.url, moved)
    return telemetry


def _replace(group: ConsumerGroup, **changes: object) -> ConsumerGroup:
    try:
        return dataclasses.replace(group, **changes)  # type: ignore[arg-type]
    except GroupConfigError as exc:
        _fail(2, str(exc))


async def _connect(opts: NatsOptions, name: str, denied: asyncio.Future[str] | None = None) -> NATS:
    """Connect with `opts`; a permission violation reported later completes `denied`.

    Raises NatsRefused (wrong credentials, TLS) or ConnectionError (no server answered).
    """

    async def report(exc: Exception) -> None:
        if (violation := nats_options.permission_violation(exc)) is not None:
            reason = f"NATS permissions violation for {violation[0]} on {violation[1]!r}"
            log.error("%s (this process's NATS user may not do that)", reason)
            if denied is not None and not denied.done():
                denied.set_result(reason)
            return
        log.warning("NATS: %s", redact(repr(exc)))

    nc = NATS()
    try:
        await nats_options.connect(
            nc,
            opts,
            within=CONNECT_TIMEOUT,
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=report,
        )
    except (TimeoutError, OSError, NatsError) as exc:
        raise ConnectionError(redact(str(exc) or repr(exc))) from None
    return nc


async def _unless_denied(work: asyncio.Future[Any], denied: asyncio.Future[Any]) -> None:
    """Wait for `work`; raise NatsRefused (and cancel it) when NATS denies a permission first."""
    await asyncio.wait([work, denied], return_when=asyncio.FIRST_COMPLETED)
    if work.done():
        work.result()
        return
    work.cancel()
    with contextlib.suppress(BaseException):
        await work
    raise NatsRefused(denied.result())


async def _consume(
    group: ConsumerGroup, url: NatsOptions, telemetry: observability.Telemetry
) -> None:
    # Signals first: a worker stopped while it is still connecting exits 0 as well.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    name = f"jetgate-worker-{group.name}"
    denied: asyncio.Future[Any] = loop.create_future()  # a permission violation, before ready
    connecting = asyncio.ensure_future(_connect(url, name, denied))
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({connecting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not connecting.done():
        connecting.cancel()
        log.info("group %s: stopped before connecting to NATS", group.name)
        return
    try:
        nc = connecting.result()
    except ConnectionError as exc:
        _fail(1, str(exc))
    log.info(
        "group %s: consuming %s %s (concurrency %d, ack_wait %gs)",
        *(group.name, group.stream, ",".join(group.filter_subjects) or "(all subjects)"),
        *(group.concurrency, group.ack_wait),
    )

    async def reconnect() -> NATS:
        try:
            return await _connect(url, name)
        except NatsRefused as exc:  # retried like any failed connection
            raise ConnectionError(str(exc)) from None

    try:
        worker = Worker(
            group,
            nc,
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
            connect=reconnect,  # when NATS closed the connection for good
        )
        announce = asyncio.create_task(_announce_ready(worker))
        running = asyncio.ensure_future(worker.run(stop))
        try:
            await _unless_denied(_until_ready(worker, running), denied)
            stats = await running
        except NatsRefused as exc:
            raise NatsRefused(
                f"group {group.name}: {exc}; grant the worker's NATS user the JetStream API "
                f"of stream {group.stream} and its consumer"
            ) from None
        finally:
            announce.cancel()
            if not running.done():
                stop.set()  # as well: a cancellation can be lost inside nats-py (Python 3.11)
                running.cancel()
                with contextlib.suppress(BaseException):
                    await running
    finally:
        await nc.close()
    log.info("group %s: stopped; %s", group.name, stats)


def _until_ready(worker: Worker, running: asyncio.Future[Any]) -> asyncio.Future[Any]:
    """Done when `worker` is ready or `running` (its run()) ended, whichever comes first."""

    async def wait() -> object:
        ready: asyncio.Future[Any] = asyncio.ensure_future(worker.ready.wait())
        try:
            await asyncio.wait([ready, running], return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if running.done():
            running.result()  # raises what ended it
        return None

    return asyncio.ensure_future(wait())


async def _announce_ready(worker: Worker) -> None:
    """Tell the parent (`JETGATE_READY_FD`) when `worker` is ready; nothing without one."""
    fd = os.environ.get(processes.READY_FD, "")
    if not fd.isdigit():
        return
    try:
        await worker.ready.wait()
        os.write(int(fd), processes.READY)
    except OSError as exc:  # the parent is gone or closed its end: it no longer waits
        log.debug("readiness not reported: %r", exc)
    finally:
        with contextlib.suppress(OSError):
            os.close(int(fd))


async def _dead_letters(action: str, group: str, url: NatsOptions, *, as_json: bool) -> None:
    denied: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    try:
        nc = await _connect(url, "jetgate-dlq", denied)
    except ConnectionError as exc:
        _fail(1, str(exc))
    try:
        await _unless_denied(
            asyncio.ensure_future(_act_on_dead_letters(nc, action, group, as_json=as_json)),
            denied,
        )
    finally:
        await nc.close()


async def _act_on_dead_letters(nc: NATS, action: str, group: str, *, as_json: bool) -> None:
    """Run one `dlq` action: `consumers.deadletter` does it (as it does for the gateway's
    Admin service), this only prints."""
    js = nc.jetstream()
    if not await deadletter.exists(js):
        print("no dead-letter stream yet (no worker has started)", file=sys.stderr)
        return
    if action == "purge":
        print(f"purged {await deadletter.purge(js, group)} dead letters of group {group}")
    elif action == "redrive":
        refused: list[str] = []

        def refuse(dead: deadletter.DeadLetter, reason: str) -> None:
            refused.append(reason)
            print(f"not redriven: {reason}", file=sys.stderr)

        with redrive_progress(sys.stderr, group) as progress:
            done = await deadletter.redrive(
                js, group, max_payload=nc.max_payload, refused=refuse, progress=progress
            )
        for dead in done:
            print(f"redrove {dead.event_id} to {dead.origin_subject}")
        print(f"redrove {len(done)} dead letters of group {group}")
        if refused:
            raise DeadLettersKept(
                f"{len(refused)} dead letters of group {group} kept (not redriven: see above)"
            )
    else:
        listed = 0
        async for dead in deadletter.dead_letters(js, group):
            listed += 1
            row = {
                "sequence": dead.sequence,
                "event_id": dead.event_id,
                "type": dead.event_type,
                "origin": f"{dead.origin_stream}/{dead.origin_sequence}",
                "subject": dead.origin_subject,
                "reason": dead.reason,
                "attempts": dead.attempts,
                "error": dead.error,
                "truncated": dead.truncated,
            }
            if as_json:
                print(json.dumps(row))
            else:
                print("  ".join(f"{k}={v}" for k, v in row.items()))
        if not listed:
            print(f"no dead letters of group {group}", file=sys.stderr)


@contextlib.contextmanager
def redrive_progress(stream: Any, group: str) -> Iterator[deadletter.ProgressCallback | None]:
    """A progress callback for `deadletter.redrive` that shows a rich progress bar on
    `stream` when it is a terminal (gone when done; colour unless `NO_COLOR`, which rich
    honours); None otherwise: off a terminal the output is the plain lines only."""
    isatty = getattr(stream, "isatty", None)
    if not (isatty and isatty()):
        yield None
        return
    bar = Progress(
        TextColumn(f"redriving dead letters of group {group}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[refused]} kept"),
        TimeElapsedColumn(),
        console=Console(file=stream),
        transient=True,
        redirect_stdout=False,  # stdout may be a file or pipe: it keeps the plain lines
        redirect_stderr=True,  # a "not redriven" line prints above the bar, not through it
    )
    task = bar.add_task("redrive", total=None, refused=0)

    def show(state: deadletter.RedriveProgress) -> None:
        bar.update(task, total=state.total, completed=state.done, refused=state.refused)

    with bar:
        yield show


def _fail(code: int, message: str) -> NoReturn:
    """Stop the command with exit `code` (2: configuration, 1: start-up); main() reports it."""
    raise (ConfigurationError if code == errors.EXIT_CONFIGURATION else StartupError)(message)
