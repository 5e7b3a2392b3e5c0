"""The consumer-group workers of `jetgate up` (setting `workers`), run as child processes.

Each `MODULE:GROUP` entry becomes one `python -m consumers consume MODULE:GROUP` process,
started with the interpreter that runs the gateway: workers are separate processes in
production too. Each worker:
- gets the NATS settings of `jetgate up` (URLs, credentials, TLS files: `JETGATE_NATS_*`,
  jetgate/nats_options.py `to_env`) in its environment, not on its command line: a URL or
  setting may carry a token or password, and any local user can read command lines (`ps`),
  while a process's environment is readable by its own user only;
- gets `JETGATE_GATEWAY`, the gateway's address, where the demo handlers publish their
  follow-up events, and shares the gateway's stdout and stderr;
- gets the `OTEL_*` variables of `jetgate up` except `OTEL_SERVICE_NAME` (a worker's
  service is its group), and its own /metrics port: the ones after the gateway's
  (`--metrics-listen` N+1, N+2, ...; any free port when the gateway's is 0). When that port
  is taken the worker takes the next free one (`--metrics-port-tries`, as `jetgate consume`
  does by default) and logs which;
- runs in its own session, so a Ctrl-C reaches only `jetgate up`, which stops the workers
  first (SIGTERM: they finish and acknowledge their in-flight events, whose follow-ups
  still need the gateway), then the gateway, then the embedded nats-server;
- gets SIGTERM when `jetgate up` dies, even by kill -9 (`die_with_parent`);
- reports `ready` on a pipe (`JETGATE_READY_FD`) once it pulls events: `wait_ready()` lets
  `jetgate up` print its banner when the pipeline really runs, not before.

Supervision (gateway/children.py, shared with the gateway processes of `--processes`):
a worker that cannot start fails `jetgate up` at once (`wait_ready()` raises `WorkerFailed`);
one that dies after it was ready is restarted with backoff, logged each time; one that keeps
dying gives up: `failed()` returns the `WorkerFailed` (a `StartupError`, exit code 1).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from gateway.children import (
    MAX_RESTARTS,
    READY_TIMEOUT,
    RESTART_BACKOFF,
    RESTART_WINDOW,
    ChildFailed,
    ChildProcesses,
)
from jetgate import nats_options, processes
from jetgate.nats_options import NatsOptions

METRICS_PORT_TRIES = 100  # a taken worker metrics port moves on to the next free one


class WorkerFailed(ChildFailed):
    """A worker of `jetgate up` cannot start or keeps dying; the message says which and why."""


class WorkerProcesses(ChildProcesses):
    """A supervised worker process per target: `start()` once the gateway serves,
    `wait_ready()`, then `failed()` while it runs, `stop()` before the gateway stops.
    A killed worker's unacknowledged events are redelivered to the group after ack_wait."""

    kind = "worker"
    failure = WorkerFailed
    log = logging.getLogger("jetgate.workers")

    def __init__(
        self,
        targets: Sequence[str],
        *,
        nats_url: str = "",
        nats: NatsOptions | None = None,
        gateway_address: str,
        metrics_listen: str = "",
        ready_timeout: float = READY_TIMEOUT,
        max_restarts: int = MAX_RESTARTS,
        restart_window: float = RESTART_WINDOW,
        backoff: Sequence[float] = RESTART_BACKOFF,
    ) -> None:
        super().__init__(
            targets,
            ready_timeout=ready_timeout,
            max_restarts=max_restarts,
            restart_window=restart_window,
            backoff=backoff,
        )
        # `nats` wins; a bare `nats_url` is the same without credentials or TLS.
        self.nats = nats if nats is not None else nats_options.options({"nats_url": nats_url})
        self.gateway_address = client_address(gateway_address)
        self.metrics_listen = metrics_listen

    def command(self, target: str, index: int = 0) -> list[str]:
        """The command line of worker number `index` (of `target`)."""
        metrics = ""
        if self.metrics_listen:
            host, _, port = self.metrics_listen.rpartition(":")
            metrics = f"{host}:{int(port) + 1 + index if int(port) else 0}"
        return [
            *(sys.executable, "-m", "consumers", "consume", target),
            *("--metrics-listen", metrics, "--metrics-port-tries", str(METRICS_PORT_TRIES)),
        ]

    def environment(self, target: str, index: int) -> dict[str, str]:
        """The parent's environment with this gateway's NATS settings and address."""
        # Our NATS settings replace any inherited ones (e.g. `up` with an embedded server).
        env = {
            k: v
            for k, v in os.environ.items()
            if k != "OTEL_SERVICE_NAME" and not k.startswith("JETGATE_NATS_")
        }
        env.update(nats_options.to_env(self.nats))
        env[processes.GATEWAY_ADDRESS] = self.gateway_address
        return env


def client_address(listen_address: str) -> str:
    """Where a local client reaches a server listening on `listen_address` (HOST:PORT)."""
    host, _, port = listen_address.rpartition(":")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "[::]":
        host = "[::1]"
    return f"{host}:{port}"
