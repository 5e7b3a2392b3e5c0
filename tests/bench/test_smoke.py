"""Smoke test of the benchmark harness (`python -m bench`): every scenario runs about a second
in both durability blocks (those fsync cannot affect, like the traced ones, in the first only),
and the memory check runs briefly. Numbers are never asserted, not even a positive rate: on
a loaded machine a scenario's first acknowledgements may come after its short window (issue
13). Asserted: every scenario ran and published something, every acknowledged event is in
the stream (the harness's sanity check; for the traced scenarios: spans reached Jaeger), and
the table has a row for each. Scenarios whose peer is not built (`make tools`) must say so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import jaeger, natscli
from bench.scenarios import SCENARIOS

REPO = Path(__file__).resolve().parents[2]
# s; only against a hung harness: a run takes 45-60 s on an idle 2-core machine (the traced
# ones wait ~5 s each) and took 170 s on a loaded one.
TIMEOUT = 600.0
QUICK = ["--seconds", "1", "--warmup", "0.2"]


def run_bench(args: list[str], out: Path, written: str) -> tuple[str, dict[str, Any]]:
    """Run `python -m bench ARGS --results OUT/latest.json`; its output and OUT/`written`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", *args, "--results", str(out / "latest.json")],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGTERM)  # the harness stops its servers, as on Ctrl-C
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)  # its servers get SIGTERM (parent-death signal)
            output, _ = proc.communicate()
        pytest.fail(f"python -m bench {' '.join(args)} took over {TIMEOUT:g}s:\n{output}")
    assert proc.returncode == 0, output
    return output, json.loads((out / written).read_text())


def test_every_scenario_in_both_blocks(tmp_path: Path) -> None:
    output, report = run_bench([*QUICK, "--fsync", "both"], tmp_path, "latest.json")

    assert report["consistent"] is True, output
    assert "sanity: OK" in output
    rows = {(r["block"], r["scenario"]): r for r in report["results"]}
    expected = [("default", name) for name in SCENARIOS]
    expected += [("fsync-always", n) for n, s in SCENARIOS.items() if s.nats_bound]
    assert sorted(rows) == sorted(expected)
    for key in expected:
        row = rows[key]
        traced = SCENARIOS[key[1]].traced is not None
        if (key[1] == "natscli-async" and natscli.find() is None) or (
            traced and jaeger.find() is None
        ):
            assert row["skipped"], row
            continue
        assert not row["skipped"], row
        assert row["ok_total"] > 0, row  # acknowledged during warm-up, window or drain
        assert row["consistent"] is True, row
        if row["stream"] is not None:
            assert row["stream_messages"] == row["ok_total"], row
        if traced:
            extra = row["extra"]
            assert extra["jaeger_check"] == "ok", row
            if SCENARIOS[key[1]].traced.sampled == 1.0:  # type: ignore[union-attr]
                assert 0 < extra["spans_received"] <= extra["spans_expected"], row
            else:  # a sampled share of 1 s of calls: whole traces of 101 spans, or none
                assert extra["spans_received"] % 101 == 0, row
    assert table_rows(output) == set(expected)
    assert (tmp_path / "latest-process.json").is_file()


def table_rows(output: str) -> set[tuple[str, str]]:
    """(block, scenario) of every row of the printed table (a skipped one too)."""
    rows: set[tuple[str, str]] = set()
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("scenario "))
    block = ""
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        if line.startswith("["):
            block = line[1 : line.index("]")]
        else:
            rows.add((block, line.split()[0]))
    return rows


def test_memory_check(tmp_path: Path) -> None:
    output, report = run_bench(
        ["--memory", "1", "--warmup", "0.2", "--fsync", "default"], tmp_path, "memory.json"
    )

    memory = report["memory"]
    assert "memory: publish-stream" in output
    assert len(memory["samples"]) >= 2
    assert memory["rss_start_bytes"] > 0
    assert memory["row"]["consistent"] is True
    assert memory["row"]["stream_messages"] == memory["row"]["ok_total"] > 0


def test_a_scenario_without_a_gateway_runs_alone(tmp_path: Path) -> None:
    # No gateway in the block: the harness declares the stream the gateway would (issue 13).
    output, report = run_bench(
        [*QUICK, "--fsync", "default", "--scenario", "raw-async"], tmp_path, "latest.json"
    )

    assert "sanity: OK" in output
    assert table_rows(output) == {("default", "raw-async")}
    [row] = report["results"]
    assert row["stream_messages"] == row["ok_total"] > 0, row
