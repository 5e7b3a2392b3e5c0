"""`python -m consumers consume` exit codes, as a real process."""

from __future__ import annotations

import select
import signal
import subprocess
import sys
from pathlib import Path

from gateway.embedded import free_port

REPO = Path(__file__).resolve().parents[2]


def consume(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-W",
            "error",
            "-m",
            "consumers",
            "consume",
            *args,
            "--metrics-listen",
            "",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_target_that_is_not_a_group_exits_2() -> None:
    for target, reason in [
        ("no_such_module:g", "cannot load"),
        ("consumers.demo:nothing", "cannot load"),
        ("consumers.demo:PUBLISH_TIMEOUT", "not a ConsumerGroup"),
    ]:
        proc = consume(target, "--nats-url", f"nats://127.0.0.1:{free_port()}")
        try:
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == 2, err
        assert reason in err


def test_sigterm_while_connecting_exits_0() -> None:
    # Nothing listens on this port: the worker keeps trying to connect until stopped.
    proc = consume("consumers.demo:billing", "--nats-url", f"nats://127.0.0.1:{free_port()}")
    try:
        # Its first failed attempt is logged after the signal handlers are in place.
        first = _line_within(proc, 30)
        assert "NATS:" in first
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert "stopped before connecting" in err


def _line_within(proc: subprocess.Popen[str], seconds: float) -> str:
    assert proc.stderr is not None
    ready, _, _ = select.select([proc.stderr], [], [], seconds)
    assert ready, f"no output within {seconds} s"
    return proc.stderr.readline()
