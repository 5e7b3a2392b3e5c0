"""`jetgate serve|up --processes N`: N gateway processes on one listen port, every core busy.

One Python process serves on one core (the GIL): `--processes N` (`auto`: the machine's
cores) runs N gateway processes, each a whole gateway (`jetgate serve --processes 1` with
the same settings) with its own NATS connection, and a supervisor that serves no RPC.
- One port: every child binds the same HOST:PORT with SO_REUSEPORT (gRPC's `grpc.so_reuseport`,
  on by default on Linux and set explicitly in gateway/limits.py) and the kernel spreads new
  connections over them (by the connection's addresses: one client channel stays on one
  process; many channels spread). A port 0 is resolved first: the supervisor binds a
  SO_REUSEPORT socket to pick the port and holds it (bound, never listening, so it gets no
  connections) while it runs, so a restarted child gets the same port back.
- Supervision (gateway/children.py, shared with `jetgate up`'s workers): a child that
  cannot start stops everything with exit code 1; one that dies is logged and restarted
  with backoff (0.5 s doubling to 8 s; more than 5 deaths a minute give up, exit 1). The
  RPCs on a killed child's connections fail UNAVAILABLE: a client that retries with the same
  event ids (the deduplication window makes a retry idempotent) loses nothing and doubles
  nothing.
- SIGHUP is passed on to every child (each re-reads its certificates, tokens and policy).
- SIGINT/SIGTERM: `up`'s workers first, then SIGTERM to every child (each drains its
  in-flight publishes within `--grace`), then the embedded nats-server; exit 0.
- Metrics stay per process: child i (from 0) serves /metrics on the `metrics_listen` port
  + i, the workers of `up` take the ports after those (port 0: a free port per child, picked
  by the supervisor); the banner lists each child's pid and metrics URL. Scrape them all
  (Prometheus sums per-process counters with `sum without(instance)`).
- Secrets stay off command lines: a child's command line is the supervisor's own arguments
  (plus `--processes 1`, the resolved `--listen` and its `--metrics-listen`); NATS
  credentials come from the same files and environment, and `up`'s embedded server's URL
  from `JETGATE_NATS_URL`.
- Each child logs `gateway process I/N (pid P) serving on ADDR` and reports ready on the
  pipe of gateway/children.py instead of printing the banner.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

import observability
from gateway.children import RESTART_BACKOFF, ChildFailed, ChildProcesses
from gateway.cluster import NatsCluster
from gateway.config import GatewayConfig
from gateway.embedded import NatsServer
from gateway.workers import WorkerProcesses
from jetgate import processes
from jetgate.errors import StartupError

log = logging.getLogger("jetgate.processes")
PROCESS = "JETGATE_PROCESS"  # "I/N" in a child's environment: which gateway process it is
# Flags of the supervisor's command line a child does not get (they take one value).
_PARENT_ONLY = ("--processes", "--nats-port", "--listen", "--metrics-listen")


class GatewayProcessFailed(ChildFailed):
    """A gateway process cannot start or keeps dying; the message says which and why."""


class GatewayProcesses(ChildProcesses):
    """N supervised `jetgate serve` processes sharing `listen` (SO_REUSEPORT)."""

    kind = "gateway process"
    failure = GatewayProcessFailed
    log = logging.getLogger("jetgate.processes")

    def __init__(
        self,
        count: int,
        *,
        argv: Sequence[str],
        listen: str,
        metrics_listen: str,
        nats_url: str = "",
        backoff: Sequence[float] = RESTART_BACKOFF,
    ) -> None:
        super().__init__([str(i + 1) for i in range(count)], backoff=backoff)
        self.argv = child_arguments(argv)
        self.listen = listen
        self.nats_url = nats_url  # `up`'s embedded server: given in the environment
        self.metrics = [_metrics_address(metrics_listen, i) for i in range(count)]

    def command(self, target: str, index: int = 0) -> list[str]:
        """`jetgate serve` with the supervisor's settings, one process, the shared port."""
        return [
            *(sys.executable, "-c", "from gateway.cli import main; main()", "serve"),
            *self.argv,
            *("--processes", "1", "--listen", self.listen),
            *("--metrics-listen", self.metrics[index]),
        ]

    def environment(self, target: str, index: int) -> dict[str, str]:
        """The supervisor's environment, which process this is, and `up`'s NATS URL."""
        env = {**os.environ, PROCESS: f"{target}/{len(self.targets)}"}
        if self.nats_url:
            env[processes.NATS_URL] = self.nats_url
        return env


def child_arguments(argv: Sequence[str]) -> list[str]:
    """The supervisor's arguments after `serve`/`up`, without the ones only it uses."""
    rest = list(argv[1:])
    kept: list[str] = []
    skip = False
    for arg in rest:
        if skip:
            skip = False
            continue
        if arg in _PARENT_ONLY:
            skip = True
            continue
        if arg.startswith(tuple(f"{flag}=" for flag in _PARENT_ONLY)):
            continue
        kept.append(arg)
    return kept


def _metrics_address(metrics_listen: str, index: int) -> str:
    if not metrics_listen:
        return ""
    host, _, port = metrics_listen.rpartition(":")
    if int(port):
        return f"{host}:{int(port) + index}"
    return f"{host}:{_free_port(host)}"


def _free_port(host: str) -> int:
    with socket.socket(_family(host)) as probe:
        probe.bind((host.strip("[]"), 0))
        return int(probe.getsockname()[1])


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET


def reserve_port(listen: str) -> tuple[socket.socket, str]:
    """A SO_REUSEPORT socket bound to `listen` (never listening) and the HOST:PORT it holds:
    the real port when `listen`'s is 0, so that every child binds the same one."""
    host, _, port = listen.rpartition(":")
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host.strip("[]"), int(port)))
    except BaseException:
        sock.close()
        raise
    return sock, f"{host}:{sock.getsockname()[1]}"


def report_ready(address: str, telemetry: observability.Telemetry) -> bool:
    """In a gateway process of a supervisor: log which one serves where and report ready on
    the readiness pipe; False (nothing done) in a standalone gateway."""
    which = os.environ.get(PROCESS, "")
    fd = os.environ.get(processes.READY_FD, "")
    if not which or not fd.isdigit():
        return False
    metrics = telemetry.metrics_server.url if telemetry.metrics_server is not None else "off"
    log.info(
        "gateway process %s (pid %d) serving on %s, metrics %s",
        *(which, os.getpid(), address, metrics),
    )
    try:
        os.write(int(fd), processes.READY)
    except OSError as exc:  # the supervisor is gone: it no longer waits
        log.debug("readiness not reported: %r", exc)
    finally:
        with contextlib.suppress(OSError):
            os.close(int(fd))
    return True


async def run(
    command: str,
    argv: Sequence[str],
    config: GatewayConfig,
    embedded: NatsServer | NatsCluster | None,
    telemetry: observability.Telemetry,
    *,
    grace: float,
) -> None:
    """Supervise `config.processes` gateway processes (and `up`'s workers) until
    SIGINT/SIGTERM, then stop them all; raises ChildFailed when one cannot run."""
    from gateway.banner import announce
    from gateway.server import Gateway

    try:
        reserved, listen = reserve_port(config.listen)
    except OSError as exc:
        raise StartupError(f"cannot listen on {config.listen}: {exc}") from exc
    try:
        gateways = GatewayProcesses(
            config.processes,
            argv=argv,
            listen=listen,
            metrics_listen=config.metrics_listen,
            nats_url=embedded.url if embedded is not None else "",
        )
        # Not started: what the banner shows (types, routes, security) from the same config.
        shown = Gateway(dataclasses.replace(config, listen=listen), meter_provider=None)
        shown.port = int(listen.rpartition(":")[2])
        metrics = config.metrics_listen
        if metrics and int(metrics.rpartition(":")[2]):  # workers after the children's ports
            host, _, port = metrics.rpartition(":")
            metrics = f"{host}:{int(port) + config.processes - 1}"
        workers = WorkerProcesses(
            config.workers if command == "up" else (),
            nats=config.nats_options(),
            gateway_address=listen,
            metrics_listen=metrics,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # SIGHUP: every gateway process re-reads its certificates, tokens, keys and policy.
        loop.add_signal_handler(signal.SIGHUP, gateways.signal, signal.SIGHUP)
        gateways.start()
        try:
            await gateways.wait_ready()
            workers.start()
            try:
                await workers.wait_ready()
                announce(shown, embedded, workers, telemetry, processes=gateways)
                await _until_stopped(stop, gateways, workers)
            finally:
                await workers.stop(grace)
            log.info("stopping: every gateway process finishes its in-flight publishes")
        finally:
            await gateways.stop(grace + 5.0)
    finally:
        reserved.close()
    log.info("stopped")


async def _until_stopped(
    stop: asyncio.Event, gateways: GatewayProcesses, workers: WorkerProcesses
) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(gateways.failed())]
    if workers.targets:
        waiters.append(asyncio.ensure_future(workers.failed()))
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    for waiter in waiters[1:]:
        if waiter.done() and not waiter.cancelled():
            failure = waiter.result()
            assert isinstance(failure, ChildFailed)
            raise failure
