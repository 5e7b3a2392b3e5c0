"""Jaeger v2 (all-in-one, in-memory) as a peer of the benchmark and the tests, on free
loopback ports only.

`make tools` builds `.tools/bin/jaeger` (github.com/jaegertracing/jaeger/cmd/jaeger). Without
`--config` it would open a dozen listeners on fixed ports (its own Prometheus metrics on
8888, health check, zpages, expvar, remote sampling, the Jaeger and Zipkin receivers, query
gRPC on all interfaces); the config below keeps only what the tests use, each pinned to
127.0.0.1 on a free port: the OTLP receiver (gRPC and HTTP), the query service (HTTP API,
and its gRPC API, which cannot be turned off) and memory storage. The collector's own
metrics are off (`level: none`: no listener) and so is the query service's self-tracing
(it would export to the default OTLP endpoint).

`run_jaeger(..., metrics=True)` (the benchmark) turns the collector's own metrics on, served
for Prometheus scrapes on one more free 127.0.0.1 port (`Jaeger.metrics_url`): among them
`otelcol_receiver_accepted_spans` / `otelcol_receiver_refused_spans`, the number of spans
received, which the query API cannot count cheaply (`Jaeger.received_spans()`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.embedded import die_with_parent

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PATH = REPO / ".tools" / "bin" / "jaeger"
START_TIMEOUT = 30.0  # s, until the query API answers
STOP_TIMEOUT = 10.0  # s, after SIGTERM before SIGKILL
START_ATTEMPTS = 3  # a free port taken by someone else between probe and bind: try again
HOST = "127.0.0.1"
MAX_TRACES = 10_000  # memory storage: the oldest traces are evicted beyond this many

CONFIG = """\
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
{metrics}
    logs:
      level: info

extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: {max_traces}
  jaeger_query:
    storage:
      traces: memstore
    enable_tracing: false
    http:
      endpoint: {host}:{query_http}
    grpc:
      endpoint: {host}:{query_grpc}

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: {host}:{otlp_grpc}
      http:
        endpoint: {host}:{otlp_http}

exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""
METRICS_OFF = "      level: none"
# `basic` has the receiver's accepted/refused span counters; pulled, i.e. served for scrapes.
METRICS_ON = """\
      level: basic
      readers:
        - pull:
            exporter:
              prometheus:
                host: {host}
                port: {port}"""

# Loopback only: never through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_SAMPLE = re.compile(r"^(\w+)(?:\{([^}]*)\})? (\S+)$")


class JaegerError(RuntimeError):
    """Jaeger did not start (the message has its log's tail)."""


@dataclass(frozen=True, slots=True)
class Jaeger:
    """A running Jaeger: where to send OTLP and where to query."""

    otlp_grpc_endpoint: str  # http://127.0.0.1:P (OTEL_EXPORTER_OTLP_ENDPOINT, protocol grpc)
    otlp_http_endpoint: str  # http://127.0.0.1:P (protocol http/protobuf; /v1/traces appended)
    query_url: str  # http://127.0.0.1:P: /api/services, /api/traces, /api/v3/traces/ID
    pid: int
    log: Path
    metrics_url: str | None = None  # http://127.0.0.1:P/metrics (run_jaeger(metrics=True))

    def api(self, path: str, **params: str | int) -> Any:
        """GET `path` of the query service with `params`; the decoded JSON body."""
        return get_json(self.query_url + path, params)

    def services(self) -> list[str]:
        return list(self.api("/api/services").get("data") or [])

    def traces(self, service: str, *, limit: int = 20) -> list[dict[str, Any]]:
        """Recent traces containing a span of `service` (Jaeger's v1 JSON, `data`)."""
        return list(self.api("/api/traces", service=service, limit=limit).get("data") or [])

    def otlp_trace(self, trace_id: str) -> dict[str, Any]:
        """Trace `trace_id` in OTLP JSON (the v3 API): parent span ids and links as sent."""
        return dict(self.api(f"/api/v3/traces/{trace_id}")["result"])

    def metrics(self) -> dict[str, float]:
        """The collector's own metrics, `name{labels}` -> value, summed over label sets
        under the bare `name` too (e.g. `otelcol_receiver_accepted_spans_total`)."""
        if self.metrics_url is None:
            raise ValueError("Jaeger started without metrics (run_jaeger(metrics=True))")
        with _OPENER.open(self.metrics_url, timeout=5.0) as reply:
            text = reply.read().decode()
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if (match := _SAMPLE.match(line)) is None:
                continue
            name, labels, value = match.groups()
            samples[f"{name}{{{labels}}}" if labels else name] = float(value)
            if labels:
                samples[name] = samples.get(name, 0.0) + float(value)
        return samples

    def received_spans(self) -> tuple[int, int]:
        """Spans the OTLP receiver (both protocols) accepted and refused so far."""
        samples = self.metrics()

        def total(what: str) -> int:
            # The Prometheus exporter adds `_total` to counters; older collectors did not.
            name = f"otelcol_receiver_{what}_spans"
            return int(samples.get(f"{name}_total", samples.get(name, 0.0)))

        return total("accepted"), total("refused")


def find(path: Path | None = None) -> Path | None:
    """The jaeger binary at `path` (default .tools/bin/jaeger) when it is an executable file."""
    path = path or DEFAULT_PATH
    return path if path.is_file() and os.access(path, os.X_OK) else None


def get_json(url: str, params: dict[str, str | int] | None = None, timeout: float = 5.0) -> Any:
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with _OPENER.open(url, timeout=timeout) as reply:
        return json.load(reply)


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free on 127.0.0.1 a moment ago."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in socks]


@contextlib.contextmanager
def run_jaeger(
    workdir: Path,
    binary: Path = DEFAULT_PATH,
    *,
    max_traces: int = MAX_TRACES,
    metrics: bool = False,
    detach: bool = False,
) -> Iterator[Jaeger]:
    """Start Jaeger with its config and log in `workdir`; stop it (by pid) on exit.

    `max_traces`: what memory storage keeps; `metrics`: serve the collector's own metrics
    (`Jaeger.metrics_url`); `detach`: run it in its own session (a Ctrl-C meant for the
    caller does not reach it before the caller stops it) with a parent-death signal (setpriv,
    when present; call from the thread that lives as long as Jaeger should, like the
    benchmark's other servers). Raises JaegerError when it does not start.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for attempt in range(1, START_ATTEMPTS + 1):
        otlp_grpc, otlp_http, query_http, query_grpc, metrics_port = free_ports(5)
        config = workdir / f"jaeger-{attempt}.yaml"
        config.write_text(
            CONFIG.format(
                metrics=METRICS_ON.format(host=HOST, port=metrics_port) if metrics else METRICS_OFF,
                max_traces=max_traces,
                host=HOST,
                otlp_grpc=otlp_grpc,
                otlp_http=otlp_http,
                query_http=query_http,
                query_grpc=query_grpc,
            )
        )
        log = workdir / f"jaeger-{attempt}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*(die_with_parent() if detach else []), str(binary), "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                start_new_session=detach,
            )
        try:
            jaeger = Jaeger(
                otlp_grpc_endpoint=f"http://{HOST}:{otlp_grpc}",
                otlp_http_endpoint=f"http://{HOST}:{otlp_http}",
                query_url=f"http://{HOST}:{query_http}",
                pid=proc.pid,
                log=log,
                metrics_url=f"http://{HOST}:{metrics_port}/metrics" if metrics else None,
            )
            if _wait_ready(proc, jaeger):
                yield jaeger
                return
            failures.append(f"attempt {attempt}:\n{tail(log)}")
        finally:
            stop(proc)
    raise JaegerError("jaeger did not start:\n" + "\n".join(failures))


def _wait_ready(proc: subprocess.Popen[bytes], jaeger: Jaeger) -> bool:
    """Whether, within START_TIMEOUT, the query API answers and both OTLP ports accept
    (the collector starts its receivers after its extensions)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if _otlp_listening(jaeger):
            try:
                jaeger.api("/api/services")
                if jaeger.metrics_url is not None:
                    jaeger.received_spans()
            except (OSError, ValueError):  # refused, reset, timeout, not JSON yet
                pass
            else:
                return True
        time.sleep(0.1)
    return False


def _otlp_listening(jaeger: Jaeger) -> bool:
    for endpoint in (jaeger.otlp_grpc_endpoint, jaeger.otlp_http_endpoint):
        port = urllib.parse.urlsplit(endpoint).port
        assert port is not None, endpoint
        with socket.socket() as probe:
            probe.settimeout(2.0)
            if probe.connect_ex((HOST, port)) != 0:
                return False
    return True


def stop(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, SIGKILL after STOP_TIMEOUT s; its exit status (None: it would not die)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_TIMEOUT)
    return proc.poll()


def tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
