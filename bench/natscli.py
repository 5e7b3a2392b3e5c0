"""The Go-client reference row: `nats bench js pub async` (natscli v0.5.0, `make tools`).

Same nats-server, its own stream (NATSCLI_STREAM, file storage), 256-byte messages without
headers, one subject per message (`--multisubject`, like jetgate's unique keys), async
publishing in batches of 500. nats bench publishes a message count, not for a time, so:
warm-up = a run killed after the warm-up time (at least CALIBRATION s), whose stored count
gives the rate; the measured run publishes rate x seconds messages and its own summary
line gives msgs/sec. Client CPU = the CLI process (RUSAGE_CHILDREN around the run), nats
CPU from /proc; the stream must hold exactly the messages published. Skipped (with a note)
when the CLI is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import subprocess
import time
from pathlib import Path

from bench.events import PAYLOAD_SIZE
from bench.measure import Context, Row, Window, proc_cpu, stream_messages
from bench.servers import stop_process
from gateway.embedded import die_with_parent

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PATH = REPO / ".tools" / "bin" / "nats"
NATSCLI_STREAM = "JGBENCH"
SUBJECT = "jgbench"  # --multisubject: jgbench.<n>, stream subjects jgbench.*
DESCRIPTION = f"Go client: nats bench js pub async, {PAYLOAD_SIZE} B, no headers"
CALIBRATION = 0.5  # s, shortest warm-up run (its count sets the measured run's size)
MIN_MESSAGES = 2000
SETTLE_LIMIT = 15.0  # s for the calibration run's last messages to be stored
RUN_TIMEOUT = 120.0  # s, beyond the expected duration
_RATE = re.compile(r"stats: ([\d,]+) msgs/sec")
_QUANTILE = re.compile(r"(min|avg|max|P50|P90|P99|P99\.9): ([\d,.]+)(us|ms|s)\b")
_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def find(path: Path | None = None) -> Path | None:
    """The nats CLI at `path` (default .tools/bin/nats) when it is an executable file."""
    path = path or DEFAULT_PATH
    return path if path.is_file() and os.access(path, os.X_OK) else None


def command(ctx: Context, msgs: int) -> list[str]:
    assert ctx.natscli is not None
    return [
        str(ctx.natscli),
        *("--server", ctx.nats_url, "--no-context", "bench", "js", "pub", "async", SUBJECT),
        *("--stream", NATSCLI_STREAM, "--create", "--purge", "--storage", "file"),
        *("--size", f"{PAYLOAD_SIZE}B", "--msgs", str(msgs), "--no-progress"),
        *("--multisubject", "--multisubjectmax", "0"),
    ]


def _start(ctx: Context, msgs: int, log: Path) -> subprocess.Popen[bytes]:
    home = ctx.workdir / "natscli-home"
    (home / ".config").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "XDG_"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    with log.open("wb") as out:
        return subprocess.Popen(
            [*die_with_parent(), *command(ctx, msgs)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)


async def _calibrate(ctx: Context, seconds: float) -> float:
    """Messages/s stored by a run killed after `seconds` (start-up included: conservative)."""
    proc = _start(ctx, 1_000_000_000, ctx.workdir / "natscli-warmup.log")
    started = time.perf_counter()
    try:
        await asyncio.sleep(seconds)
        stored = await stream_messages(ctx.nc, NATSCLI_STREAM)
    except Exception:
        stored = 0  # the stream may not exist yet
    finally:
        stop_process(proc, timeout=5.0)
    rate = stored / (time.perf_counter() - started)
    await _settle(ctx)
    return rate


async def _settle(ctx: Context, limit: float = SETTLE_LIMIT) -> None:
    """Until the killed run's messages (still buffered in the server) are all stored: else
    they land after the measured run's purge (with fsync always, for a second or more)."""
    deadline = time.perf_counter() + limit
    last = -1
    while time.perf_counter() < deadline:
        try:
            count = await stream_messages(ctx.nc, NATSCLI_STREAM)
        except Exception:
            return  # no stream: nothing was published
        if count == last:
            return
        last = count
        await asyncio.sleep(0.3)


async def measure(ctx: Context, window: Window) -> Row:
    if ctx.natscli is None:
        return Row(skipped=f"nats CLI not found at {DEFAULT_PATH} (`make tools` builds it)")
    rate = await _calibrate(ctx, max(window.warmup, CALIBRATION))
    msgs = max(MIN_MESSAGES, int(rate * window.seconds))
    log = ctx.workdir / "natscli.log"
    cpu_before, nats_before = _children_cpu(), proc_cpu(ctx.nats_pid)
    started = time.perf_counter()
    proc = _start(ctx, msgs, log)
    try:
        await asyncio.to_thread(_wait, proc, RUN_TIMEOUT + 2 * window.seconds)
    finally:
        code = stop_process(proc, timeout=5.0)  # already exited unless the deadline passed
    elapsed = time.perf_counter() - started
    client_cpu, nats_cpu = _children_cpu() - cpu_before, proc_cpu(ctx.nats_pid) - nats_before
    output = log.read_text(errors="replace")
    found = _RATE.search(output)
    stored = await stream_messages(ctx.nc, NATSCLI_STREAM) if found else None
    quantiles = {
        k: float(v.replace(",", "")) * _UNIT_MS[u] for k, v, u in _QUANTILE.findall(output)
    }
    errors = {} if found and code == 0 else {f"nats bench exited {code}: {output[-300:]}": msgs}
    events_per_s = float(found.group(1).replace(",", "")) if found else 0.0
    return Row(
        seconds=elapsed,
        events=msgs if found else 0,
        events_per_s=events_per_s,
        client_cpu_us_per_event=1e6 * client_cpu / msgs,
        nats_cpu_us_per_event=1e6 * nats_cpu / msgs,
        client_cpu_cores=client_cpu / elapsed,
        nats_cpu_cores=nats_cpu / elapsed,
        ok_total=msgs if found else 0,
        failed_total=0 if found else msgs,
        errors=errors,
        stream=NATSCLI_STREAM,
        stream_messages=stored,
        consistent=bool(found) and code == 0 and stored == msgs,
        extra={
            "command": " ".join(command(ctx, msgs)[1:]),
            "calibration_msgs_per_s": rate,
            # nats bench's latencies are per async batch of 500 publishes, not per message.
            "batch_latency_ms": quantiles,
        },
    )
