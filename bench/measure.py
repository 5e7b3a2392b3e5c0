"""Measuring one scenario: result tallies, CPU and RSS from /proc, the timed window, a Row.

A timed scenario runs its `Runner` (publish until `stop` is set, report every result to the
`Tally`, return once nothing is in flight). `measure_run` lets it warm up, snapshots
counters and CPU times, measures for a fixed time, snapshots again, stops it, waits for the
drain and checks the stream: its message count must equal the OK results (the stream is
purged before each scenario). events/s counts results that arrived inside the window.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nats.aio.client import Client as NATS

from bench.events import Events

CLK_TCK = os.sysconf("SC_CLK_TCK")
RPC_TIMEOUT = 30.0  # s; the gateway caps its JetStream wait at publish_timeout (5 s)
DRAIN_TIMEOUT = 15.0  # s for in-flight work to finish after a measurement
MAX_ERRORS = 10_000  # a scenario stops early once this many events failed
_ENTRY_INDEX = re.compile(r"\[\d+\]")

Server = Literal["gateway", "echo", "secure-gateway", "procs-gateway"]


@dataclass
class Tally:
    """Results of one scenario; latencies (s) are recorded only while `measuring`."""

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
        """One RPC (or stream message) answered; `started` is its perf_counter() at send."""
        self.rpcs += 1
        if self.measuring:
            self.latencies.append(time.perf_counter() - started)

    def latency(self, started: float) -> None:
        """A per-message latency (raw scenarios), no RPC counted."""
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
    """What scenarios publish with and measure; one per block (nats-server + its servers)."""

    events: Events
    nc: NATS
    nats_url: str
    nats_pid: int | None
    workdir: Path
    # EventGatewayStubs on grpc.aio channels (their type stubs describe the sync API).
    gateway: Any = None
    gateway_channel: Any = None  # the grpc.aio channel of `gateway` (jetgate.client rows)
    echo: Any = None
    gateway_pid: int | None = None  # None: not started, or in this process
    echo_pid: int | None = None
    natscli: Path | None = None  # the `nats` CLI, when available
    # The TLS + bearer token gateway (bench.secure) and the metadata its calls carry.
    secure: Any = None
    secure_pid: int | None = None
    secure_metadata: tuple[tuple[str, str], ...] = ()
    # `jetgate serve --processes 2` (the supervisor's pid: its CPU counts its children's).
    procs_pid: int | None = None
    # Stubs on separate connections (SO_REUSEPORT spreads connections, not calls), per server.
    spread: dict[str, list[Any]] = field(default_factory=dict)

    def pid(self, server: Server | None) -> int | None:
        if server == "procs-gateway":
            return self.procs_pid
        if server == "gateway":
            return self.gateway_pid
        if server == "echo":
            return self.echo_pid
        if server == "secure-gateway":
            return self.secure_pid
        return None


@dataclass(frozen=True)
class Window:
    """Warm-up and measurement seconds of a scenario."""

    warmup: float
    seconds: float


Runner = Callable[[Context, Tally, asyncio.Event], Coroutine[Any, Any, None]]


@dataclass
class Row:
    """One line of the table (and one entry of the results JSON)."""

    scenario: str = ""
    description: str = ""
    block: str = ""  # "default" or "fsync-always"
    seconds: float = 0.0
    events: int = 0
    events_per_s: float = 0.0
    rpcs_per_s: float | None = None
    client_cpu_us_per_event: float | None = None
    server_cpu_us_per_event: float | None = None  # gateway or echo process
    nats_cpu_us_per_event: float | None = None
    client_cpu_cores: float | None = None
    server_cpu_cores: float | None = None
    nats_cpu_cores: float | None = None
    latency: str = ""  # what p50/p99/p999 measure ("" when none)
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    ok_total: int = 0
    failed_total: int = 0
    duplicates: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    stream: str | None = None  # whose message count must equal ok_total
    stream_messages: int | None = None
    ended_early: bool = False
    consistent: bool = False
    skipped: str = ""  # why the scenario did not run ("" when it ran)
    extra: dict[str, Any] = field(default_factory=dict)


def proc_cpu(pid: int | None) -> float:
    """CPU seconds (user + system, all threads) used so far by process `pid` and its running
    descendants (the gateway processes of `jetgate serve --processes N`)."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    own = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)
    return own + sum(_child_cpu(child) for child in _children(pid))


def _child_cpu(pid: int) -> float:
    try:
        return proc_cpu(pid)
    except OSError:  # it exited since it was listed
        return 0.0


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            children += [int(c) for c in task.read_text().split()]
    return children


def proc_rss(pid: int) -> int:
    """Resident set size of process `pid` in bytes (VmRSS of /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def quantile_ms(values: list[float], q: float) -> float | None:
    """The q-quantile of sorted `values` (s) in ms; None when empty."""
    if not values:
        return None
    return 1000 * values[min(len(values) - 1, int(q * len(values)))]


@dataclass
class _Snapshot:
    wall: float
    ok: int
    rpcs: int
    client_cpu: float
    server_cpu: float
    nats_cpu: float


def _snapshot(tally: Tally, server_pid: int | None, nats_pid: int | None) -> _Snapshot:
    return _Snapshot(
        wall=time.perf_counter(),
        ok=tally.ok,
        rpcs=tally.rpcs,
        client_cpu=time.process_time(),
        server_cpu=proc_cpu(server_pid),
        nats_cpu=proc_cpu(nats_pid),
    )


async def _run_for(
    task: asyncio.Task[None], seconds: float, tick: Callable[[], None] | None = None
) -> bool:
    """Sleep `seconds` (calling `tick` every second) or until the scenario ends early."""
    deadline = time.perf_counter() + seconds
    while (left := deadline - time.perf_counter()) > 0:
        done, _ = await asyncio.wait({task}, timeout=min(left, 1.0) if tick else left)
        if done:
            task.result()  # raises what failed it
            return True
        if tick is not None and deadline - time.perf_counter() > 0.5:
            tick()
    return False


async def stream_messages(nc: NATS, stream: str) -> int:
    info = await nc.jetstream().stream_info(stream)
    return int(info.state.messages)


async def measure_run(
    run: Runner,
    ctx: Context,
    window: Window,
    *,
    server: Server | None,
    stream: str | None,
    latency: str,
    tick: Callable[[], None] | None = None,
) -> Row:
    """Warm up, measure for `window.seconds`, stop, drain and check `stream` (when given).

    `server`: whose process CPU is the server column; `tick`: called about every second of
    the measurement (the memory check samples RSS with it).
    """
    if stream is not None:
        await ctx.nc.jetstream().purge_stream(stream)
    tally = Tally()
    stop = asyncio.Event()
    server_pid = ctx.pid(server)
    task = asyncio.create_task(run(ctx, tally, stop))
    try:
        ended = await _run_for(task, window.warmup)
        start = _snapshot(tally, server_pid, ctx.nats_pid)
        tally.measuring = True
        if tick is not None:
            tick()
        ended = ended or await _run_for(task, window.seconds, tick)
        end = _snapshot(tally, server_pid, ctx.nats_pid)
        if tick is not None:
            tick()
        tally.measuring = False
        stop.set()
        await asyncio.wait_for(task, DRAIN_TIMEOUT + RPC_TIMEOUT)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    stored = await stream_messages(ctx.nc, stream) if stream is not None else None
    events = end.ok - start.ok
    elapsed = max(end.wall - start.wall, 1e-9)
    per_event = 1e6 / events if events else 0.0
    latencies = sorted(tally.latencies)
    server_cpu = end.server_cpu - start.server_cpu
    nats_cpu = end.nats_cpu - start.nats_cpu  # nothing stored (no stream): not shown
    return Row(
        seconds=elapsed,
        events=events,
        events_per_s=events / elapsed,
        rpcs_per_s=(end.rpcs - start.rpcs) / elapsed if tally.rpcs else None,
        client_cpu_us_per_event=(end.client_cpu - start.client_cpu) * per_event,
        server_cpu_us_per_event=server_cpu * per_event if server_pid else None,
        nats_cpu_us_per_event=nats_cpu * per_event if stream is not None else None,
        client_cpu_cores=(end.client_cpu - start.client_cpu) / elapsed,
        server_cpu_cores=server_cpu / elapsed if server_pid else None,
        nats_cpu_cores=nats_cpu / elapsed if stream is not None else None,
        latency=latency if latencies else "",
        p50_ms=quantile_ms(latencies, 0.50),
        p99_ms=quantile_ms(latencies, 0.99),
        p999_ms=quantile_ms(latencies, 0.999),
        ok_total=tally.ok,
        failed_total=tally.failed,
        duplicates=tally.duplicates,
        errors=dict(tally.errors),
        stream=stream,
        stream_messages=stored,
        ended_early=ended,
        consistent=(stored is None or stored == tally.ok)
        and tally.failed == 0
        and tally.duplicates == 0
        and not ended,
    )


Measurer = Callable[[Context, Window], Awaitable[Row]]
