"""`jetgate up` (what `make run` runs) as a real process: comes up, publishes, stops cleanly."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc

from jetgate.v1 import gateway_pb2_grpc
from tests.integration.conftest import REPO, request


def _jetgate() -> str:
    return str(Path(sys.executable).parent / "jetgate")


def test_jetgate_up_serves_publishes_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETGATE_")}
    proc = subprocess.Popen(
        [
            _jetgate(),
            "up",
            "--config",
            str(REPO / "jetgate.toml"),
            "--nats-port",
            "0",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("--last-for" in x for x in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        banner = "".join(lines)
        address = re.search(r"listening on (127\.0\.0\.1:\d+)", banner)
        nats_url = re.search(r"NATS: nats://127\.0\.0\.1:(\d+)", banner)
        assert address, banner
        assert nats_url, banner
        assert "grpcurl -plaintext" in banner
        assert "stream get ORDERS --last-for orders.OrderPlaced.o-42" in banner

        with grpc.insecure_channel(address.group(1)) as channel:
            reply = gateway_pb2_grpc.EventGatewayStub(channel).Publish(request("o-42"), timeout=10)
        assert reply.subject == "orders.OrderPlaced.o-42"
        assert reply.sequence == 1
        assert (tmp_path / "data" / "nats" / "jetstream").is_dir()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        # The embedded nats-server went down with it.
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", int(nats_url.group(1)))) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
