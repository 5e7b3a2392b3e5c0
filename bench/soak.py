"""`python -m bench.soak` (`make soak`): does anything grow while jetgate runs for a while?

    .venv/bin/python -m bench.soak [--seconds 600] [--interval 30] [--warmup 30]
                                   [--rate 1000] [--max-growth 10]

Starts its own processes on loopback ports in a temp directory, like the benchmark
(`bench.servers`): nats-server, a gateway (`jetgate serve`, the demo config) and one worker
of a consumer group (`python -m consumers consume bench.soak_group:soak`). One PublishStream
call sends batches of 100 OrderPlaced at a fixed offered rate (`--rate` events/s: the soak
looks for leaks, not for throughput, and a fixed rate keeps the samples comparable); the
worker drains them.

Every `--interval` seconds (the first sample after `--warmup` seconds of traffic, when
caches and pools are filled) it prints one row per sample: for the gateway and the worker
their RSS (VmRSS), open file descriptors (entries of /proc/PID/fd) and threads (Threads of
/proc/PID/status: asyncio tasks live inside the process and cannot be counted from outside;
a leaked task that holds a socket shows up in the descriptors), plus the events published
(acknowledged to this client) and consumed (acknowledged by the group: stream messages minus
the consumer's pending and unacknowledged ones). At the end, publishing stops, the worker
drains what is left, a last sample is taken and a summary line gives the change from the first
to the last sample of each figure. Exit status 1 when an event failed, was not consumed or a
process died; 3 when a figure grew by more than `--max-growth` percent (the goal: flat
within 10 %). Every process is stopped by pid at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import nats
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from bench.events import STREAM, Events, order_payload
from bench.measure import proc_rss
from bench.servers import (
    Process,
    log_tail,
    start_gateway,
    start_worker,
    stop_process,
    wait_serving,
)
from bench.soak_group import GROUP
from gateway.embedded import NatsServer
from jetgate import nats_options
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc

BATCH = 100
IN_FLIGHT = 8  # request messages awaiting their response
READY_LIMIT = 30.0  # s for the worker to create its consumer
DRAIN_LIMIT = 120.0  # s for the worker to consume what is left after publishing stops
MIB = 1024 * 1024
FIGURES = ("rss", "fds", "threads")


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """What one process holds at one moment."""

    rss: int  # bytes
    fds: int
    threads: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """One row of the table."""

    at: float  # s since the first sample
    gateway: Usage
    worker: Usage
    published: int
    consumed: int


def usage(pid: int) -> Usage:
    """RSS, open file descriptors and threads of process `pid`, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        threads = next(int(line.split()[1]) for line in status if line.startswith("Threads:"))
    return Usage(rss=proc_rss(pid), fds=len(os.listdir(f"/proc/{pid}/fd")), threads=threads)


HEADER = (
    f"{'time s':>7} | {'gateway RSS MiB':>15} {'fds':>5} {'threads':>7} | "
    f"{'worker RSS MiB':>14} {'fds':>5} {'threads':>7} | {'published':>10} {'consumed':>10}"
)


def row(sample: Sample) -> str:
    g, w = sample.gateway, sample.worker
    return (
        f"{sample.at:>7.0f} | {g.rss / MIB:>15.1f} {g.fds:>5} {g.threads:>7} | "
        f"{w.rss / MIB:>14.1f} {w.fds:>5} {w.threads:>7} | "
        f"{sample.published:>10,} {sample.consumed:>10,}"
    )


def growth(first: Sample, last: Sample) -> dict[str, float]:
    """Relative change first -> last of each figure, keyed `gateway.rss` etc."""
    changes = {}
    for who in ("gateway", "worker"):
        for figure in FIGURES:
            before = getattr(getattr(first, who), figure)
            after = getattr(getattr(last, who), figure)
            changes[f"{who}.{figure}"] = after / before - 1 if before else 0.0
    return changes


def summary(first: Sample, last: Sample, errors: int, max_growth: float) -> str:
    changes = growth(first, last)
    parts = []
    for who in ("gateway", "worker"):
        a, b = getattr(first, who), getattr(last, who)
        parts.append(
            f"{who} RSS {a.rss / MIB:.1f} -> {b.rss / MIB:.1f} MiB "
            f"({100 * changes[who + '.rss']:+.1f} %), fds {a.fds} -> {b.fds} "
            f"({100 * changes[who + '.fds']:+.1f} %), threads {a.threads} -> {b.threads} "
            f"({100 * changes[who + '.threads']:+.1f} %)"
        )
    worst = max(changes.values())
    verdict = "yes" if worst <= max_growth else "NO"
    return (
        f"soak summary over {last.at:.0f} s: {'; '.join(parts)}; published {last.published:,}, "
        f"consumed {last.consumed:,}, errors {errors}; flat within "
        f"{100 * max_growth:g} %: {verdict} (largest change {100 * worst:+.1f} %)"
    )


async def consumed(nc: NATS) -> int:
    """Events the group has acknowledged (the stream holds only the soak's events)."""
    js = nc.jetstream()
    stored = (await js.stream_info(STREAM)).state.messages
    info = await js.consumer_info(STREAM, GROUP)
    return int(stored) - int(info.num_pending) - int(info.num_ack_pending)


@dataclass
class Publisher:
    """One PublishStream call at a fixed offered rate until `stop` is set."""

    events: Events
    rate: float
    ok: int = 0
    errors: int = 0

    async def run(self, stub: Any, stop: asyncio.Event) -> None:
        """`stub`: an EventGatewayStub on a grpc.aio channel (its type stubs are the sync API)."""
        slots = asyncio.Semaphore(IN_FLIGHT)
        loop = asyncio.get_running_loop()

        async def requests() -> AsyncIterator[gateway_pb2.PublishBatchRequest]:
            next_at = loop.time()
            while True:
                await slots.acquire()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, next_at - loop.time()))
                if stop.is_set():
                    return
                next_at = max(next_at, loop.time()) + BATCH / self.rate  # late: no burst
                yield self.events.batch("soak", BATCH)

        call = stub.PublishStream(requests(), timeout=None)
        try:
            async for response in call:
                for result in response.results:
                    if result.WhichOneof("result") == "ok":
                        self.ok += 1
                    else:
                        self.errors += 1
                slots.release()
        except grpc.aio.AioRpcError as exc:
            print(f"PublishStream failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
            self.errors += 1


def alive(*processes: Process) -> None:
    for process in processes:
        if process.proc.poll() is not None:
            code = process.proc.returncode
            raise RuntimeError(f"{process.name} exited with {code}:\n{log_tail(process.log)}")


async def wait_consumer(nc: NATS, worker: Process) -> None:
    deadline = time.monotonic() + READY_LIMIT
    while True:
        alive(worker)
        with contextlib.suppress(NotFoundError):
            await nc.jetstream().consumer_info(STREAM, GROUP)
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker created no consumer within {READY_LIMIT:g}s")
        await asyncio.sleep(0.1)


async def soak(
    args: argparse.Namespace, nats_url: str, workdir: Path, processes: list[Process]
) -> int:
    """Run the soak against the started gateway (`processes[0]`); the worker is started once
    the gateway serves (it has declared the stream then) and appended to `processes`."""
    [gw] = processes
    nc = await nats.connect(
        **nats_options.connect_kwargs(nats_options.options({"nats_url": nats_url})),
        name="jetgate-soak",
    )
    channel = grpc.aio.insecure_channel(gw.address)
    try:
        await wait_serving(channel, gw)
        worker = start_worker(nats_url, workdir, f"bench.soak_group:{GROUP}")
        processes.append(worker)
        await wait_consumer(nc, worker)
        publisher = Publisher(events=Events(order_payload()), rate=args.rate)
        stop = asyncio.Event()
        task = asyncio.create_task(publisher.run(gateway_pb2_grpc.EventGatewayStub(channel), stop))
        began = 0.0

        async def sample() -> Sample:
            nonlocal began
            alive(gw, worker)
            now = time.monotonic()
            began = began or now
            return Sample(
                at=now - began,
                gateway=usage(gw.pid),
                worker=usage(worker.pid),
                published=publisher.ok,
                consumed=await consumed(nc),
            )

        await asyncio.sleep(args.warmup)
        print(HEADER, flush=True)
        first = await sample()
        print(row(first), flush=True)
        end = time.monotonic() + args.seconds
        while (left := end - time.monotonic()) > 0 and not task.done():
            await asyncio.sleep(min(args.interval, left))
            print(row(await sample()), flush=True)
        stop.set()
        await task
        deadline = time.monotonic() + DRAIN_LIMIT
        while await consumed(nc) < publisher.ok and time.monotonic() < deadline:
            alive(gw, worker)
            await asyncio.sleep(0.2)
        last = await sample()
        print(f"{row(last)}   (publishing stopped, the worker drained)", flush=True)
        print(summary(first, last, publisher.errors, args.max_growth / 100), flush=True)
        stored = (await nc.jetstream().stream_info(STREAM)).state.messages
        if publisher.errors or last.consumed != publisher.ok or stored != publisher.ok:
            print(
                f"FAIL: stream {stored:,}, published {publisher.ok:,}, consumed {last.consumed:,}"
            )
            return 1
        return 0 if max(growth(first, last).values()) <= args.max_growth / 100 else 3
    finally:
        await channel.close()
        await nc.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=600.0, help="after the warm-up")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=30.0, help="traffic before the 1st sample")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s offered")
    parser.add_argument("--max-growth", type=float, default=10.0, help="percent (exit 3 beyond)")
    args = parser.parse_args(argv)
    if min(args.seconds, args.interval, args.rate) <= 0 or args.warmup < 0:
        parser.error("--seconds, --interval and --rate must be positive, --warmup not negative")
    return args


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m bench.soak`; SIGTERM stops it like Ctrl-C."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    print(
        f"soak: gateway + worker of group {GROUP!r}, PublishStream {args.rate:g} events/s in "
        f"batches of {BATCH}, {args.warmup:g} s warm-up + {args.seconds:g} s, a sample every "
        f"{args.interval:g} s (threads: asyncio tasks are not visible from outside)",
        flush=True,
    )
    processes: list[Process] = []
    with tempfile.TemporaryDirectory(prefix="jetgate-soak-") as tmp:
        workdir = Path(tmp)
        nats_server = NatsServer(workdir / "nats")
        try:
            nats_server.start()
            processes.append(start_gateway(nats_server.url, workdir))
            code = asyncio.run(soak(args, nats_server.url, workdir, processes))
        except KeyboardInterrupt:
            print("\ninterrupted: every process stopped", file=sys.stderr)
            code = 130
        except RuntimeError as exc:
            print(f"FAIL: {exc}", file=sys.stderr)
            code = 1
        finally:
            for process in reversed(processes):
                stop_process(process.proc)
            nats_server.stop()
    raise SystemExit(code)


if __name__ == "__main__":
    main()
