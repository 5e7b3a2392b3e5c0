"""The processes the benchmark starts besides nats-server (`gateway.embedded.NatsServer`).

- the gateway: `jetgate serve` with the demo config (jetgate.toml, nats_url and listen
  replaced, publish_timeout raised to PUBLISH_TIMEOUT: a loaded machine under `sync_interval:
  always` can take over the default 5 s to store 8 batches of 500, and the bench measures
  throughput, not that bound), optionally under cProfile; tracing off (no `OTEL_*`
  variables reach it), metrics on as by default (a /metrics endpoint on a free port, never
  scraped: the cost is recording them);
- the traced gateway: the same, with tracing on (`traced_env`: parent-based always-on, so
  every call without trace context is sampled; spans exported over OTLP/gRPC to the Jaeger
  of `bench.jaeger`, default BatchSpanProcessor);
- the echo server: `python -m bench.echo` (a grpc.aio Publish that never touches NATS);
- a worker: `python -m consumers consume MODULE:GROUP` (the soak's, `bench.soak_group`),
  metrics on a free port.

NATS: each function takes a URL or `jetgate.nats_options.NatsOptions` (credentials, TLS) and
hands it to the process in its environment (`JETGATE_NATS_*`), never on its command line.

The servers listen on a free 127.0.0.1 port; every process logs to the work directory, runs
in its own session (a Ctrl-C meant for the benchmark must not stop them before it does) with a
parent-death signal (setpriv, when present), and are stopped by pid: SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.embedded import die_with_parent, free_port
from jetgate import nats_options
from jetgate.nats_options import NatsOptions
from jetgate.urls import redact

REPO = Path(__file__).resolve().parents[1]
CONFIG_PATH = REPO / "jetgate.toml"
SERVICE = "jetgate.v1.EventGateway"
START_LIMIT = 30.0  # s until a server must answer health checks with SERVING
PUBLISH_TIMEOUT = 20.0  # s; below the client's RPC_TIMEOUT (30 s): the gateway answers first


@dataclass
class Process:
    """A started server process: what it is, where it listens, where it logs."""

    name: str
    proc: subprocess.Popen[bytes]
    address: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


def _start(name: str, argv: list[str], workdir: Path, address: str, env: dict[str, str]) -> Process:
    log = workdir / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*die_with_parent(), *argv],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our Ctrl-C must not stop it before we do
        )
    return Process(name=name, proc=proc, address=address, log=log)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JETGATE_", "OTEL_"))}
    env["JETGATE_LOG_LEVEL"] = "WARNING"
    return env


def traced_env(otlp_grpc_endpoint: str) -> dict[str, str]:
    """Tracing on, OTLP over gRPC to `otlp_grpc_endpoint`, BatchSpanProcessor defaults (queue
    2048, batches of 512, every 5 s; a full queue drops spans, logged as WARNING). The sampler
    is the default, parent-based always-on: a call without trace context is a sampled root
    (always sampled), a call with one follows the client's decision (`-traced-1pct`)."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_grpc_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }


def nats_env(nats: str | NatsOptions) -> dict[str, str]:
    """The `JETGATE_NATS_*` variables connecting a process to `nats` (a URL or options)."""
    if isinstance(nats, str):
        nats = nats_options.options({"nats_url": nats})
    return nats_options.to_env(nats)


def gateway_command(port: int, profile: Path | None, extra: Sequence[str] = ()) -> list[str]:
    """`jetgate serve` on `port` (NATS settings come in the environment: `nats_env`)."""
    script = Path(sys.executable).with_name("jetgate")
    args = ["serve", "--config", str(CONFIG_PATH), "--listen", f"127.0.0.1:{port}"]
    args += ["--metrics-listen", "127.0.0.1:0"]
    args += ["--publish-timeout", f"{PUBLISH_TIMEOUT:g}s", *extra]
    if profile is not None:
        return [sys.executable, "-m", "cProfile", "-o", str(profile), str(script), *args]
    return [str(script), *args]


def start_gateway(
    nats_url: str | NatsOptions,
    workdir: Path,
    profile: Path | None = None,
    *,
    name: str = "gateway",
    env: dict[str, str] | None = None,
    extra: Sequence[str] = (),
) -> Process:
    """`jetgate serve` against `nats_url` on a free loopback port, logging to `name`.log;
    `env`: variables on top of the clean environment (e.g. `traced_env`); `extra`: more
    flags (e.g. `bench.secure`'s)."""
    port = free_port()
    argv = gateway_command(port, profile, extra)
    env = {**_clean_env(), **nats_env(nats_url), **(env or {})}
    return _start(name, argv, workdir, f"127.0.0.1:{port}", env)


def start_echo(workdir: Path) -> Process:
    """`python -m bench.echo` on a free loopback port (uvloop like the gateway)."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.echo", "--port", str(port)]
    env = _clean_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return _start("echo", argv, workdir, f"127.0.0.1:{port}", env)


def start_worker(
    nats_url: str | NatsOptions, workdir: Path, target: str, *, name: str = "worker"
) -> Process:
    """A consumer-group worker process (`python -m consumers consume target`) against
    `nats_url`, Prometheus metrics on a free loopback port; its address is that of NATS
    (redacted)."""
    argv = [sys.executable, "-m", "consumers", "consume", target]
    argv += ["--metrics-listen", "127.0.0.1:0"]
    env = {**_clean_env(), **nats_env(nats_url)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    address = nats_url if isinstance(nats_url, str) else nats_url.url
    return _start(name, argv, workdir, redact(address), env)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int | None:
    """SIGTERM `proc` by pid; SIGKILL when it is still there after `timeout` s."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
    return proc.wait(timeout)


def log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


async def wait_serving(
    channel: grpc.aio.Channel, process: Process | None, limit: float = START_LIMIT
) -> None:
    """Until health says SERVING for the EventGateway service; RuntimeError when the
    process exits or takes more than `limit` s (`process` None: the in-process gateway)."""
    health = health_pb2_grpc.HealthStub(channel)
    name = process.name if process else "gateway"
    deadline = time.monotonic() + limit
    while True:
        if process is not None and process.proc.poll() is not None:
            code = process.proc.returncode
            raise RuntimeError(f"{name} exited with {code}:\n{log_tail(process.log)}")
        with contextlib.suppress(grpc.aio.AioRpcError):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not SERVING after {limit:.0f}s")
        await asyncio.sleep(0.1)
