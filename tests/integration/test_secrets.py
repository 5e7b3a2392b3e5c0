"""No secret is ever printed: a NATS URL with a token or password shows redacted in the
banner, the logs of the gateway and its workers, error messages, and no command line."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import nats
import pytest
from nats.js.errors import NotFoundError

from gateway.embedded import NatsServer
from jetgate.v1 import gateway_pb2_grpc
from tests.integration.conftest import REPO, request
from tests.integration.jetgate_up import WAIT, jetgate, read_banner, read_rest, start_up
from tests.support.eventually import eventually

SECRET = "t0ken-s3cr3t-4711"


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server that wants the token SECRET."""
    server = NatsServer(tmp_path / "nats-token", token=SECRET)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


async def test_jetgate_up_with_a_token_url_never_prints_the_token(
    tmp_path: Path, token_server: NatsServer
) -> None:
    proc = await start_up(tmp_path, env={"JETGATE_NATS_URL": token_server.client_url})
    assert proc.stdout is not None
    rest: asyncio.Task[str] | None = None
    try:
        banner = await read_banner(proc.stdout)
        rest = asyncio.create_task(read_rest(proc.stdout))
        assert f"NATS: nats://***@127.0.0.1:{token_server.port}" in banner, banner
        address = re.search(r"listening on (127\.0\.0\.1:\d+)", banner)
        assert address, banner
        worker_pids = [int(pid) for pid in re.findall(r"consumers\.demo:\w+  pid (\d+)", banner)]
        assert len(worker_pids) == 2, banner
        for pid in [proc.pid, *worker_pids]:
            assert SECRET not in _cmdline(pid)
        # The pipeline works with the token: the workers connected with it.
        async with grpc.aio.insecure_channel(address.group(1)) as channel:
            await gateway_pb2_grpc.EventGatewayStub(channel).Publish(request("o-1"), timeout=10)
        nc = await nats.connect(token_server.client_url)
        try:
            js = nc.jetstream()

            async def shipped() -> bool:
                await js.get_last_msg("ORDERS", "orders.OrderShipped.o-1")
                return True

            assert await eventually(shipped, retry_on=(AssertionError, NotFoundError))
        finally:
            await nc.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), WAIT) == 0
        output = banner + await asyncio.wait_for(rest, WAIT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if rest is not None and not rest.done():
            await asyncio.wait_for(rest, WAIT)
    assert "worker consumers.demo:billing" in output
    assert SECRET not in output


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JETGATE_", "OTEL_"))}
    return subprocess.run(
        [jetgate(), *args],
        env=clean,
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_serve_with_a_wrong_password_does_not_print_it(token_server: NatsServer) -> None:
    url = f"nats://jetgate:{SECRET}@127.0.0.1:{token_server.port}"
    done = _run(
        *("serve", "--config", str(REPO / "jetgate.toml"), "--nats-url", url),
        *("--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"),
    )
    assert done.returncode == 1, done.stderr
    assert f"nats://jetgate:***@127.0.0.1:{token_server.port}" in done.stderr
    assert SECRET not in done.stdout + done.stderr


def test_dlq_with_an_unreachable_token_url_does_not_print_it(token_server: NatsServer) -> None:
    url = f"nats://{SECRET}@127.0.0.1:1"  # nothing listens on port 1
    done = _run("dlq", "list", "--group", "billing", "--nats-url", url)
    assert done.returncode == 1, done.stderr
    assert "nats://***@127.0.0.1:1" in done.stderr
    assert SECRET not in done.stdout + done.stderr
