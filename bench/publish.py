"""Publish throughput: the gateway's publish RPCs against raw nats-py JetStream publishing.

    .venv/bin/python -m bench [--seconds 5] [--warmup 1] [--scenario NAME ...]
                              [--gateway process|inprocess] [--profile-gateway FILE]

Starts its own nats-server (file storage in a temporary directory, 127.0.0.1, free port)
and the gateway with the demo config (jetgate.toml, nats_url replaced):
- `--gateway process` (default): `jetgate serve` in a separate process, so client and
  server do not share one event loop; its CPU time is read from /proc/<pid>/stat.
- `--gateway inprocess`: `Gateway` in the benchmark's own event loop (client and server
  CPU are then one number).

Every scenario warms up, then measures for a fixed time; events/s counts events whose
result arrived inside the measurement window. Every event has a unique key (so a unique
subject) and a unique id: nothing is de-duplicated. Payload: a serialized OrderPlaced of
exactly PAYLOAD_SIZE bytes. The raw scenarios send the same NATS message the gateway
stores (same subject scheme, same CloudEvents headers), so their ratio is the gateway's cost.

After each scenario the stream's message count must equal the OK results of that scenario
(the stream is purged between scenarios); errors are counted and printed. Results go to
bench/results/latest.json. Every process started is stopped by pid, also on Ctrl-C.

Adding a scenario: write `async def run_x(ctx, tally, stop)` that publishes until `stop`
is set, reports every result to `tally`, and returns once nothing is in flight; register it
in SCENARIOS.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
import nats
from google.protobuf import any_pb2, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from gateway.config import GatewayConfig, load_config
from gateway.embedded import NatsServer, find_nats_server, free_port
from gateway.server import Gateway
from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
CONFIG_PATH = REPO / "jetgate.toml"
RESULTS_PATH = REPO / "bench" / "results" / "latest.json"
STREAM = "ORDERS"
EVENT_TYPE = "jetgate.examples.orders.v1.OrderPlaced"
SERVICE = "jetgate.v1.EventGateway"
PAYLOAD_SIZE = 256
RPC_TIMEOUT = 30.0  # s; the gateway caps its JetStream wait at publish_timeout (5 s)
DRAIN_TIMEOUT = 15.0  # s for in-flight work to finish after a measurement
MAX_ERRORS = 10_000  # a scenario stops early once this many events failed
CLK_TCK = os.sysconf("SC_CLK_TCK")
SHOWN_ERRORS = 5  # most frequent error kinds printed per scenario (all are in the JSON)
_ENTRY_INDEX = re.compile(r"\[\d+\]")


# --------------------------------------------------------------------------- events


def order_payload(size: int = PAYLOAD_SIZE) -> bytes:
    """A realistic OrderPlaced, padded (line item description) to exactly `size` bytes."""
    order = orders_pb2.OrderPlaced(
        order_id="o-bench-000000000001",
        customer_id="c-bench-4711",
        items=[
            orders_pb2.LineItem(
                sku="sku-000123",
                quantity=2,
                unit_price=orders_pb2.Money(currency_code="EUR", units=9, nanos=990_000_000),
            )
        ],
        total=orders_pb2.Money(currency_code="EUR", units=19, nanos=980_000_000),
        shipping_address=orders_pb2.Address(
            name="Ada Lovelace",
            line1="12 Analytical Engine Street",
            city="London",
            postal_code="NW1 6XE",
            country_code="GB",
        ),
        placed_at=timestamp_pb2.Timestamp(seconds=1_790_000_000, nanos=123_456_000),
    )
    for filler in range(size):
        order.items[0].description = "x" * filler
        if order.ByteSize() >= size:
            break
    data = order.SerializeToString()
    if len(data) != size:
        raise ValueError(f"cannot pad OrderPlaced to exactly {size} bytes (got {len(data)})")
    return data


class Events:
    """Builds publish requests and raw NATS messages; every event gets a fresh key."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.any = any_pb2.Any(type_url=wire.type_url(EVENT_TYPE), value=payload)
        self._counter = itertools.count(1)
        self._run = uuid.uuid4().hex[:8]
        # Raw scenarios: the headers the gateway writes, with id/key swapped per message.
        self._headers = wire.encode_headers(
            wire.Envelope(
                id=wire.new_event_id(),
                type=EVENT_TYPE,
                source="jetgate",
                key="k",
                time=datetime.now(UTC),
            )
        )
        self._id_prefix = str(uuid.uuid4())[:24]  # + 12 hex digits: 36 chars like a UUID

    def key(self, tag: str) -> str:
        return f"{tag}-{self._run}-{next(self._counter)}"

    def request(self, tag: str) -> gateway_pb2.PublishRequest:
        event = event_pb2.Event(key=self.key(tag), payload=self.any)
        return gateway_pb2.PublishRequest(event=event)

    def batch(self, tag: str, size: int) -> gateway_pb2.PublishBatchRequest:
        return gateway_pb2.PublishBatchRequest(entries=[self.request(tag) for _ in range(size)])

    def raw(self, tag: str) -> tuple[str, dict[str, str]]:
        """Subject and (fresh) headers of one raw message, shaped like the gateway's."""
        n = next(self._counter)
        key = f"{tag}-{self._run}-{n}"
        headers = dict(self._headers)
        event_id = f"{self._id_prefix}{n:012x}"
        headers[wire.MSG_ID] = headers[wire.CE_ID] = event_id
        headers[wire.CE_SUBJECT] = key
        return wire.subject("orders", EVENT_TYPE, key), headers

    def sizes(self) -> dict[str, int]:
        request = self.request("unary")
        subject, headers = self.raw("raw")
        return {
            "payload_bytes": len(self.payload),
            "publish_request_bytes": request.ByteSize(),
            "nats_headers_bytes": wire.encoded_headers_size(headers),
            "nats_subject_bytes": len(subject),
        }


# --------------------------------------------------------------------------- tallies


@dataclass
class Tally:
    """Results of one scenario; `measuring` says whether latencies are being recorded."""

    ok: int = 0
    failed: int = 0
    duplicates: int = 0
    rpcs: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    measuring: bool = False

    def error(self, what: str, events: int = 1) -> None:
        self.failed += events
        self.errors[_ENTRY_INDEX.sub("[*]", what)[:200]] += events

    def rpc(self, started: float) -> None:
        self.rpcs += 1
        if self.measuring:
            self.latencies.append(time.perf_counter() - started)

    def results(self, results: Any) -> None:
        """Count a PublishBatchResponse's results."""
        for result in results:
            if result.WhichOneof("result") == "ok":
                self.ok += 1
                if result.ok.duplicate:
                    self.duplicates += 1
            else:
                self.error(f"{result.error.code} {result.error.message}")


@dataclass
class Context:
    """What scenarios publish with."""

    events: Events
    nc: NATS
    # An EventGatewayStub on a grpc.aio channel (its type stubs describe the sync API).
    stub: Any


Runner = Callable[[Context, Tally, asyncio.Event], Coroutine[Any, Any, None]]


def rpc_error(exc: grpc.aio.AioRpcError) -> str:
    return f"{exc.code().name}: {exc.details()}"


# --------------------------------------------------------------------------- scenarios


async def run_unary(ctx: Context, tally: Tally, stop: asyncio.Event, concurrency: int = 64) -> None:
    async def worker() -> None:
        while not stop.is_set() and tally.failed < MAX_ERRORS:
            request = ctx.events.request("unary")
            started = time.perf_counter()
            try:
                response = await ctx.stub.Publish(request, timeout=RPC_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                tally.error(rpc_error(exc))
                continue
            tally.ok += 1
            tally.duplicates += response.duplicate
            tally.rpc(started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def run_batch(size: int, in_flight: int = 8) -> Runner:
    async def run(ctx: Context, tally: Tally, stop: asyncio.Event) -> None:
        async def worker() -> None:
            while not stop.is_set() and tally.failed < MAX_ERRORS:
                request = ctx.events.batch(f"b{size}", size)
                started = time.perf_counter()
                try:
                    response = await ctx.stub.PublishBatch(request, timeout=RPC_TIMEOUT)
                except grpc.aio.AioRpcError as exc:
                    tally.error(rpc_error(exc), size)
                    continue
                tally.results(response.results)
                tally.rpc(started)

        await asyncio.gather(*(worker() for _ in range(in_flight)))

    return run


def run_stream(size: int = 100, in_flight: int = 8) -> Runner:
    """One PublishStream call; at most `in_flight` request messages await their response."""

    async def run(ctx: Context, tally: Tally, stop: asyncio.Event) -> None:
        slots = asyncio.Semaphore(in_flight)
        sent: collections.deque[float] = collections.deque()

        async def requests() -> AsyncIterator[gateway_pb2.PublishBatchRequest]:
            while True:
                await slots.acquire()
                if stop.is_set() or tally.failed >= MAX_ERRORS:
                    return
                request = ctx.events.batch("s", size)
                sent.append(time.perf_counter())
                yield request

        call = ctx.stub.PublishStream(requests(), timeout=None)
        try:
            async for response in call:
                started = sent.popleft()
                tally.results(response.results)
                tally.rpc(started)
                slots.release()
        except grpc.aio.AioRpcError as exc:
            tally.error(f"stream: {rpc_error(exc)}", len(sent) * size)

    return run


async def run_raw_async(ctx: Context, tally: Tally, stop: asyncio.Event) -> None:
    """nats-py `js.publish_async`, 4000 pending: JetStream without the gateway."""
    js = ctx.nc.jetstream(publish_async_max_pending=4000)

    def settled(future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            tally.error("cancelled")
        elif (exc := future.exception()) is not None:
            tally.error(repr(exc))
        else:
            tally.ok += 1
            tally.duplicates += bool(future.result().duplicate)

    while not stop.is_set() and tally.failed < MAX_ERRORS:
        subject, headers = ctx.events.raw("ra")
        future = await js.publish_async(subject, ctx.events.payload, headers=headers)
        future.add_done_callback(settled)
    try:
        await asyncio.wait_for(js.publish_async_completed(), DRAIN_TIMEOUT)
    except TimeoutError:
        tally.error("no ack within the drain timeout", js.publish_async_pending())


async def run_raw_pipelined(
    ctx: Context, tally: Tally, stop: asyncio.Event, window: int = 1000
) -> None:
    """nc.publish with a reply subject per message under one wildcard inbox subscription."""
    nc = ctx.nc
    prefix = nc.new_inbox()
    slots = asyncio.Semaphore(window)
    waiting: set[str] = set()
    drained = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        if msg.subject not in waiting:
            return
        waiting.discard(msg.subject)
        slots.release()
        if msg.headers and msg.headers.get("Status") == "503":
            tally.error("503 no responders")
        else:
            body = json.loads(msg.data)
            if "error" in body:
                tally.error(str(body["error"]))
            else:
                tally.ok += 1
                tally.duplicates += bool(body.get("duplicate"))
        if stop.is_set() and not waiting:
            drained.set()

    sub = await nc.subscribe(f"{prefix}.*", cb=on_reply)
    try:
        for n in itertools.count(1):
            if stop.is_set() or tally.failed >= MAX_ERRORS:
                break
            await slots.acquire()
            subject, headers = ctx.events.raw("rp")
            token = f"{prefix}.{n}"
            waiting.add(token)
            await nc.publish(subject, ctx.events.payload, reply=token, headers=headers)
        if waiting:
            await nc.flush()
            try:
                await asyncio.wait_for(drained.wait(), DRAIN_TIMEOUT)
            except TimeoutError:
                tally.error("no ack within the drain timeout", len(waiting))
    finally:
        await sub.unsubscribe()


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Runner
    gateway: bool  # goes through the gateway (else: raw NATS)
    description: str


SCENARIOS = {
    s.name: s
    for s in [
        Scenario("raw-async", run_raw_async, False, "js.publish_async, 4000 pending"),
        Scenario(
            "raw-pipelined", run_raw_pipelined, False, "nc.publish + reply inbox, window 1000"
        ),
        Scenario("publish-unary", run_unary, True, "Publish, 64 concurrent calls"),
        Scenario("publish-batch-100", run_batch(100), True, "PublishBatch 100/call, 8 in flight"),
        Scenario("publish-batch-500", run_batch(500), True, "PublishBatch 500/call, 8 in flight"),
        Scenario("publish-stream", run_stream(), True, "PublishStream 100/msg, 8 in flight"),
    ]
}
BASELINE = "raw-async"


# --------------------------------------------------------------------------- measuring


def proc_cpu(pid: int | None) -> float:
    """CPU seconds (user + system, all threads) used so far by process `pid`."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


@dataclass
class Snapshot:
    wall: float
    ok: int
    rpcs: int
    client_cpu: float
    gateway_cpu: float
    nats_cpu: float


def snapshot(tally: Tally, gateway_pid: int | None, nats_pid: int | None) -> Snapshot:
    return Snapshot(
        wall=time.perf_counter(),
        ok=tally.ok,
        rpcs=tally.rpcs,
        client_cpu=time.process_time(),
        gateway_cpu=proc_cpu(gateway_pid),
        nats_cpu=proc_cpu(nats_pid),
    )


async def _run_for(task: asyncio.Task[None], seconds: float) -> bool:
    """Sleep `seconds` or until the scenario ends (too many errors); True when it ended."""
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if done:
        task.result()  # raises what failed it
    return bool(done)


async def measure(
    scenario: Scenario,
    ctx: Context,
    *,
    warmup: float,
    seconds: float,
    gateway_pid: int | None,
    nats_pid: int | None,
) -> dict[str, Any]:
    js = ctx.nc.jetstream()
    await js.purge_stream(STREAM)
    tally = Tally()
    stop = asyncio.Event()
    task = asyncio.create_task(scenario.run(ctx, tally, stop))
    try:
        ended = await _run_for(task, warmup)
        start = snapshot(tally, gateway_pid, nats_pid)
        tally.measuring = True
        ended = ended or await _run_for(task, seconds)
        end = snapshot(tally, gateway_pid, nats_pid)
        tally.measuring = False
        stop.set()
        await asyncio.wait_for(task, DRAIN_TIMEOUT + RPC_TIMEOUT)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    stored = (await js.stream_info(STREAM)).state.messages
    events = end.ok - start.ok
    elapsed = max(end.wall - start.wall, 1e-9)
    per_event = 1e6 / events if events else 0.0
    latencies = sorted(tally.latencies)
    return {
        "scenario": scenario.name,
        "description": scenario.description,
        "via_gateway": scenario.gateway,
        "seconds": elapsed,
        "events": events,
        "events_per_s": events / elapsed if elapsed > 0 else 0.0,
        "ended_early": ended,
        "rpcs_per_s": (end.rpcs - start.rpcs) / elapsed if scenario.gateway else None,
        "client_cpu_us_per_event": (end.client_cpu - start.client_cpu) * per_event,
        "gateway_cpu_us_per_event": (end.gateway_cpu - start.gateway_cpu) * per_event,
        "nats_cpu_us_per_event": (end.nats_cpu - start.nats_cpu) * per_event,
        "client_cpu_cores": (end.client_cpu - start.client_cpu) / elapsed,
        "gateway_cpu_cores": (end.gateway_cpu - start.gateway_cpu) / elapsed,
        "nats_cpu_cores": (end.nats_cpu - start.nats_cpu) / elapsed,
        "rpc_p50_ms": _quantile(latencies, 0.50),
        "rpc_p99_ms": _quantile(latencies, 0.99),
        "ok_total": tally.ok,
        "failed_total": tally.failed,
        "duplicates": tally.duplicates,
        "errors": dict(tally.errors),
        "stream_messages": stored,
        "consistent": stored == tally.ok
        and tally.failed == 0
        and tally.duplicates == 0
        and not ended,
    }


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return 1000 * values[min(len(values) - 1, int(q * len(values)))]


# --------------------------------------------------------------------------- processes


def gateway_command(nats_url: str, port: int, profile: Path | None) -> list[str]:
    script = Path(sys.executable).with_name("jetgate")
    args = ["serve", "--config", str(CONFIG_PATH), "--listen", f"127.0.0.1:{port}"]
    args += ["--nats-url", nats_url]
    if profile is not None:
        return [sys.executable, "-m", "cProfile", "-o", str(profile), str(script), *args]
    return [str(script), *args]


def start_gateway_process(
    nats_url: str, workdir: Path, profile: Path | None
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETGATE_")}
    env["JETGATE_LOG_LEVEL"] = "WARNING"
    log = (workdir / "gateway.log").open("ab")
    with log:
        proc = subprocess.Popen(
            gateway_command(nats_url, port, profile),
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our Ctrl-C must not stop it before we do
        )
    return proc, f"127.0.0.1:{port}"


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int | None:
    """SIGTERM `proc` by pid; SIGKILL when it is still there after `timeout` s."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
    return proc.wait(timeout)


def _log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


async def wait_serving(
    channel: grpc.aio.Channel, proc: subprocess.Popen[bytes] | None, log: Path, limit: float
) -> None:
    """Until the gateway's health says SERVING; RuntimeError when it exits or takes `limit` s."""
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + limit
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{_log_tail(log)}")
        with contextlib.suppress(grpc.aio.AioRpcError):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"gateway not SERVING after {limit:.0f}s")
        await asyncio.sleep(0.1)


# --------------------------------------------------------------------------- run


@dataclass
class Options:
    seconds: float
    warmup: float
    scenarios: list[str]
    mode: str
    profile: Path | None


async def run_all(
    opts: Options,
    nats_server: NatsServer,
    gateway_proc: subprocess.Popen[bytes] | None,
    address: str | None,
    workdir: Path,
) -> list[dict[str, Any]]:
    gateway: Gateway | None = None
    nc = await nats.connect(nats_server.url, name="jetgate-bench")
    try:
        if address is None:  # in-process
            config: GatewayConfig = load_config(CONFIG_PATH, env={})
            config = dataclasses.replace(config, nats_url=nats_server.url, listen="127.0.0.1:0")
            gateway = Gateway(config)
            await gateway.start()
            address = gateway.address
        async with grpc.aio.insecure_channel(address) as channel:
            await wait_serving(channel, gateway_proc, workdir / "gateway.log", limit=30)
            events = Events(order_payload())
            ctx = Context(events=events, nc=nc, stub=gateway_pb2_grpc.EventGatewayStub(channel))
            results = []
            for name in opts.scenarios:
                print(f"  {name}: {opts.warmup:g}s warm-up + {opts.seconds:g}s ...", flush=True)
                results.append(
                    await measure(
                        SCENARIOS[name],
                        ctx,
                        warmup=opts.warmup,
                        seconds=opts.seconds,
                        gateway_pid=gateway_proc.pid if gateway_proc else None,
                        nats_pid=nats_server.pid,
                    )
                )
            return results
    finally:
        if gateway is not None:
            await gateway.stop(grace=2.0)
        await nc.close()


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[dict[str, Any]], mode: str) -> None:
    base = next((r for r in results if r["scenario"] == BASELINE), None)
    inproc = mode == "inprocess"
    client = "bench+gw CPU" if inproc else "client CPU"
    header = (
        f"{'scenario':<18} {'events/s':>9} {'vs raw':>7} {client + ' µs/ev':>19} "
        f"{'gateway CPU µs/ev':>17} {'nats CPU µs/ev':>14} {'gw cores':>8} "
        f"{'p50 ms':>7} {'p99 ms':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        ratio = r["events_per_s"] / base["events_per_s"] if base and r["via_gateway"] else None
        gateway_cpu = r["gateway_cpu_us_per_event"] if r["via_gateway"] and not inproc else None
        cores = r["gateway_cpu_cores"] if r["via_gateway"] and not inproc else None
        shown_ratio = "-" if ratio is None else f"{ratio:.2f}x"
        print(
            f"{r['scenario']:<18} {r['events_per_s']:>9,.0f} {shown_ratio:>7} "
            f"{r['client_cpu_us_per_event']:>19.1f} {_fmt(gateway_cpu, '>17.1f'):>17} "
            f"{r['nats_cpu_us_per_event']:>14.1f} {_fmt(cores, '>8.2f'):>8} "
            f"{_fmt(r['rpc_p50_ms'], '>7.2f'):>7} {_fmt(r['rpc_p99_ms'], '>7.2f'):>7}"
        )


def print_sanity(results: list[dict[str, Any]]) -> bool:
    ok = sum(r["ok_total"] for r in results)
    stored = sum(r["stream_messages"] for r in results)
    failed = sum(r["failed_total"] for r in results)
    duplicates = sum(r["duplicates"] for r in results)
    consistent = all(r["consistent"] for r in results)
    verdict = "OK" if consistent else "FAIL"
    print(
        f"sanity: {verdict}: stream messages {stored:,} vs OK results {ok:,} "
        f"(summed over scenarios, stream purged before each); errors {failed}; "
        f"duplicates {duplicates}"
    )
    for r in results:
        if not r["consistent"]:
            print(
                f"  {r['scenario']}: stream {r['stream_messages']:,}, OK {r['ok_total']:,}, "
                f"failed {r['failed_total']}, duplicates {r['duplicates']}"
                + (" (stopped early: too many errors)" if r["ended_early"] else "")
            )
        errors = collections.Counter(r["errors"])
        for what, count in errors.most_common(SHOWN_ERRORS):
            print(f"  {r['scenario']} error x{count}: {what}")
        if len(errors) > SHOWN_ERRORS:
            print(f"  {r['scenario']}: {len(errors) - SHOWN_ERRORS} more error kinds in the JSON")
    return consistent


def environment(mode: str, sizes: dict[str, int]) -> dict[str, Any]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "?"

    try:
        server = subprocess.run(
            [str(find_nats_server()), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        server = "?"
    return {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "gateway_mode": mode,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "grpcio": version("grpcio"),
        "nats-py": version("nats-py"),
        "protobuf": version("protobuf"),
        "nats_server": server,
        "storage": "file (temporary directory), default sync_interval (ack before fsync)",
        **sizes,
    }


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="jetgate publish throughput vs raw JetStream"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement per scenario")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up per scenario")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        metavar="NAME",
        help=f"repeatable; default: all ({', '.join(SCENARIOS)})",
    )
    parser.add_argument(
        "--gateway",
        choices=["process", "inprocess"],
        default="process",
        help="gateway as a separate `jetgate serve` process (default) or in this event loop",
    )
    parser.add_argument(
        "--profile-gateway",
        type=Path,
        metavar="FILE",
        help="run the gateway process under cProfile, stats to FILE (process mode only)",
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0:
        parser.error("--seconds must be positive and --warmup not negative")
    if args.profile_gateway and args.gateway != "process":
        parser.error("--profile-gateway needs --gateway process")
    return Options(
        seconds=args.seconds,
        warmup=args.warmup,
        scenarios=args.scenario or list(SCENARIOS),
        mode=args.gateway,
        profile=args.profile_gateway.absolute() if args.profile_gateway else None,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m bench`."""
    try:
        _main(argv)
    except KeyboardInterrupt:
        print("\ninterrupted: nats-server and gateway stopped, no results written", file=sys.stderr)
        raise SystemExit(130) from None


def _main(argv: list[str] | None) -> None:
    opts = parse_args(argv)
    events = Events(order_payload())
    sizes = events.sizes()
    print(
        f"jetgate publish bench: gateway {opts.mode}, {opts.warmup:g}s warm-up + "
        f"{opts.seconds:g}s per scenario, {os.cpu_count()} CPUs\n"
        f"event: OrderPlaced payload {sizes['payload_bytes']} B serialized "
        f"(PublishRequest {sizes['publish_request_bytes']} B; NATS message = payload + "
        f"{sizes['nats_headers_bytes']} B headers, raw scenarios send the same headers)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="jetgate-bench-") as tmp:
        workdir = Path(tmp)
        nats_server = NatsServer(workdir / "nats")
        gateway_proc: subprocess.Popen[bytes] | None = None
        try:
            nats_server.start()
            address = None
            if opts.mode == "process":
                gateway_proc, address = start_gateway_process(
                    nats_server.url, workdir, opts.profile
                )
            results = asyncio.run(run_all(opts, nats_server, gateway_proc, address, workdir))
        finally:
            if gateway_proc is not None:
                code = stop_process(gateway_proc)
                if code not in (0, None):
                    print(f"warning: gateway exited with {code}", file=sys.stderr)
            nats_server.stop()
    print()
    print_table(results, opts.mode)
    print()
    consistent = print_sanity(results)
    if opts.mode == "process":
        print(
            "vs raw = events/s / raw-async events/s; client CPU = this process (bench client); "
            "gateway CPU = the `jetgate serve` process (all threads); gw cores = gateway CPU s "
            "per wall s; p50/p99 = per RPC (stream: request message to its response)"
        )
    else:
        print("gateway in this process: bench+gw CPU covers client and gateway together")
    if opts.profile:
        print(f"gateway cProfile stats: {opts.profile}")
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "environment": environment(opts.mode, sizes),
        "options": {"seconds": opts.seconds, "warmup": opts.warmup, "baseline": BASELINE},
        "results": results,
        "consistent": consistent,
    }
    text = json.dumps(report, indent=2) + "\n"
    RESULTS_PATH.write_text(text)
    RESULTS_PATH.with_name(f"latest-{opts.mode}.json").write_text(text)
    print(f"wrote {RESULTS_PATH} (and latest-{opts.mode}.json)")
    if not consistent:
        raise SystemExit(1)
