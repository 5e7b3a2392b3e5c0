"""Exit codes of the real `jetgate` entry point (jetgate/errors.py): 0 after a clean stop,
1 when start-up fails, 2 for a configuration error; each command, as a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from gateway.embedded import free_port
from tests.integration.conftest import REPO
from tests.integration.jetgate_up import jetgate

WAIT = 60.0  # s, longest any one command may take here


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JETGATE_", "OTEL_"))}
    return {**clean, "PYTHONWARNINGS": "error", **(extra or {})}


def _run(
    args: Sequence[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [jetgate(), *args],
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=WAIT,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _serve(*args: str) -> list[str]:
    return ["serve", "--config", str(REPO / "jetgate.toml"), "--listen", "127.0.0.1:0", *args]


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port some other process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_serve_exits_0_after_sigterm(nats_url: str) -> None:
    proc = subprocess.Popen(
        [jetgate(), *_serve("--nats-url", nats_url, "--metrics-listen", "127.0.0.1:0")],
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # ends at EOF if it dies: the assert below says why
            lines.append(line)
            if "listening on" in line:
                break
        assert "listening on" in "".join(lines), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(lines) + rest
    assert "stopped" in rest


def test_unknown_type_module_exits_2() -> None:
    # The registry refuses it before anything connects: a configuration error, not a
    # start-up failure (it used to fall into the generic handler and exit 1).
    done = _run(
        _serve(
            "--nats-url",
            "nats://127.0.0.1:1",
            "--metrics-listen",
            "127.0.0.1:0",
            "--type-modules",
            "no.such_pb2",
        )
    )
    assert done.returncode == 2, done.stderr
    assert "configuration error" in done.stderr
    assert "no.such_pb2" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_otel_variable_exits_2() -> None:
    done = _run(
        _serve("--nats-url", "nats://127.0.0.1:1", "--metrics-listen", "127.0.0.1:0"),
        env={"OTEL_TRACES_EXPORTER": "carrier-pigeon"},
    )
    assert done.returncode == 2, done.stderr
    assert "OTEL_TRACES_EXPORTER" in done.stderr


def test_metrics_port_taken_exits_1(held_port: int) -> None:
    done = _run(
        _serve("--nats-url", "nats://127.0.0.1:1", "--metrics-listen", f"127.0.0.1:{held_port}")
    )
    assert done.returncode == 1, done.stderr
    assert f"metrics_listen 127.0.0.1:{held_port}" in done.stderr


def test_listen_port_taken_exits_1(nats_url: str, held_port: int) -> None:
    args = _serve("--nats-url", nats_url, "--metrics-listen", "127.0.0.1:0")
    args[args.index("127.0.0.1:0")] = f"127.0.0.1:{held_port}"  # --listen
    done = _run(args)
    assert done.returncode == 1, done.stderr
    assert f"127.0.0.1:{held_port}" in done.stderr


def test_consume_bad_target_exits_2() -> None:
    done = _run(
        ["consume", "no_such_module:billing", "--nats-url", f"nats://127.0.0.1:{free_port()}"]
    )
    assert done.returncode == 2, done.stderr
    assert "cannot load 'no_such_module:billing'" in done.stderr


def test_consume_metrics_port_taken_exits_1(held_port: int) -> None:
    done = _run(
        [
            "consume",
            "consumers.demo:billing",
            "--nats-url",
            "nats://127.0.0.1:1",
            "--metrics-listen",
            f"127.0.0.1:{held_port}",
        ]
    )
    assert done.returncode == 1, done.stderr
    assert f"--metrics-listen 127.0.0.1:{held_port}" in done.stderr


def test_consume_exits_0_after_sigterm(nats_url: str, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            jetgate(),
            "consume",
            "consumers.demo:billing",
            "--nats-url",
            nats_url,
            "--metrics-listen",
            "",
        ],
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "consuming" in line:
                break
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(lines) + rest
