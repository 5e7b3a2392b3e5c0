"""The soak (`python -m bench.soak`, `make soak`) run for a few seconds: it starts its own
processes, prints a table of RSS, descriptors and threads of the gateway and the worker,
every published event is consumed, and it stops what it started. No rate or growth is
asserted (a few seconds on a busy machine say nothing about leaks: `--max-growth` is wide)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak import HEADER

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 300.0  # s, only against a hung soak: the run itself takes about 10 s
ARGS = ["--seconds", "3", "--interval", "1", "--warmup", "1", "--rate", "500"]
ARGS += ["--max-growth", "1000"]
ROW = re.compile(
    r"^ *(\d+) \| +([\d.]+) +(\d+) +(\d+) \| +([\d.]+) +(\d+) +(\d+) \| +([\d,]+) +([\d,]+)"
)


def test_soak_prints_its_table_and_consumes_every_event() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.soak", *ARGS],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGTERM)  # the soak stops its processes, as on Ctrl-C
        output, _ = proc.communicate(timeout=60)
        pytest.fail(f"python -m bench.soak took over {TIMEOUT:g}s:\n{output}")
    assert proc.returncode == 0, output

    assert HEADER in output
    rows = [m.groups() for line in output.splitlines() if (m := ROW.match(line))]
    assert len(rows) >= 2, output  # the first sample and the last, after the drain
    for row in rows:
        _, g_rss, g_fds, g_threads, w_rss, w_fds, w_threads, *_ = row
        for rss in (g_rss, w_rss):
            assert float(rss) > 1, row  # MiB
        for fds in (g_fds, w_fds):
            assert int(fds) >= 3, row  # stdio at least, sockets besides
        for threads in (g_threads, w_threads):
            assert int(threads) >= 1, row
    *_, published, consumed = rows[-1]
    assert published == consumed != "0", output
    summary = next(line for line in output.splitlines() if line.startswith("soak summary"))
    assert "errors 0" in summary
    assert re.search(r"gateway RSS [\d.]+ -> [\d.]+ MiB", summary)
