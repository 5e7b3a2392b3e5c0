"""`jetgate init` as a new user runs it: in an empty folder, then the printed generate
command, `jetgate serve`, `jetgate publish` and `jetgate events`, all real processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.support.eventually import eventually

BIN = Path(sys.executable).parent
JETGATE = str(BIN / "jetgate")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("JETGATE_")}


async def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        argv,
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_init_then_generate_serve_publish_and_read(tmp_path: Path, nats_url: str) -> None:
    done = await _run(JETGATE, "init", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "wrote jetgate.toml" in done.stdout
    again = await _run(JETGATE, "init", cwd=tmp_path)
    assert again.returncode == 2
    assert "exists; nothing written" in again.stderr
    # The generate command exactly as printed (two lines joined by a backslash).
    lines = done.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if "grpc_tools.protoc" in line)
    generate = (lines[at].rstrip("\\") + lines[at + 1]).split()
    assert generate[:3] == ["python", "-m", "grpc_tools.protoc"]
    protoc = await _run(str(BIN / "python"), *generate[1:], cwd=tmp_path)
    assert protoc.returncode == 0, protoc.stderr

    listen = f"127.0.0.1:{_free_port()}"
    serve = await asyncio.create_subprocess_exec(
        *(JETGATE, "serve", "--nats-url", nats_url, "--listen", listen, "--metrics-listen", ""),
        cwd=tmp_path,
        env=_env(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        payload = {"cartId": "c-1", "sku": "s-1", "quantity": 2}

        async def published() -> subprocess.CompletedProcess[str]:
            result = await _run(
                *(JETGATE, "publish", "ItemAdded", "--key", "c-1", "--json", json.dumps(payload)),
                *("--gateway", listen),
                cwd=tmp_path,
            )
            assert result.returncode == 0, result.stderr
            return result

        reply = json.loads((await eventually(published, within=60)).stdout)
        assert reply["subject"] == "carts.ItemAdded.c-1"
        events = await _run(
            *(JETGATE, "events", "CARTS", "--key", "c-1", "--json", "--nats-url", nats_url),
            cwd=tmp_path,
        )
        assert events.returncode == 0, events.stderr
        (row,) = map(json.loads, events.stdout.splitlines())
        assert row["type"] == "example.events.v1.ItemAdded"
        assert row["payload"] == payload
    finally:
        serve.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(serve.communicate(), 60)
    assert serve.returncode == 0, err
