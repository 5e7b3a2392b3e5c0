"""Simulated power loss (issue 12): acknowledged events survive under durability = fsync.

nats-server's store is on `tests.support.lazyfs`, a FUSE filesystem that keeps on its
"disk" only what was fsynced. Several clients publish through the gateway (Publish,
PublishBatch, PublishStream); then the power goes: nats-server is killed (-9), the
filesystem unmounted, and nats-server started again on what the disk kept. Every event the
gateway acknowledged is looked for there.
- durability = "lazy" (nats-server's default sync_interval): acknowledged events are lost
  (this shows the harness detects loss);
- durability = "fsync" (the default): none is.

Needs /dev/fuse, fusermount3 and libfuse3 (Debian `fuse3`) and mfusepy: `make lazyfs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import nats
import pytest

from gateway.config import Durability, GatewayConfig
from gateway.embedded import NatsServer
from jetgate import wire
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import request, serving
from tests.support.eventually import eventually

CLIENTS = 4
DIRS = ("live", "disk", "mnt")


def _missing() -> str:
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if shutil.which("fusermount3") is None:
        return "no fusermount3 (Debian fuse3; `make lazyfs`)"
    if importlib.util.find_spec("mfusepy") is None:
        return "mfusepy not installed (`make lazyfs`)"
    return ""


pytestmark = pytest.mark.skipif(bool(_missing()), reason=_missing() or "ok")


def _mount(root: Path) -> subprocess.Popen[bytes]:
    """Start lazyfs: LIVE, DISK and the mountpoint under `root` (its log: lazyfs.log)."""
    root.mkdir(parents=True)
    with open(root / "lazyfs.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.support.lazyfs", *(str(root / d) for d in DIRS)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def _mounted(proc: subprocess.Popen[bytes], root: Path) -> bool:
    assert proc.poll() is None, (root / "lazyfs.log").read_text()
    return os.path.ismount(root / "mnt")


def _unmount(proc: subprocess.Popen[bytes], root: Path) -> None:
    if os.path.ismount(root / "mnt"):
        subprocess.run(["fusermount3", "-u", "-z", str(root / "mnt")], check=False)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.asynccontextmanager
async def lazyfs(root: Path) -> AsyncIterator[tuple[Path, Path]]:
    """A mounted lazyfs: (mountpoint, disk). Unmounted and its process ended on exit."""
    proc = _mount(root)
    try:
        await eventually(lambda: _mounted(proc, root), what="lazyfs mounted")
        yield root / "mnt", root / "disk"
    finally:
        _unmount(proc, root)


async def _publish(stub: gateway_pb2_grpc.EventGatewayStub, client: int) -> list[str]:
    """Publish, PublishBatch and PublishStream events; the ids acknowledged as stored."""
    acked: list[str] = []
    for i in range(10):
        event_id = f"u-{client}-{i}"
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.Publish(request(f"k{client}", event_id=event_id))
            acked.append(event_id)
    ids = [f"b-{client}-{i}" for i in range(50)]
    entries = [request(f"k{client}", event_id=i) for i in ids]
    reply = await stub.PublishBatch(gateway_pb2.PublishBatchRequest(entries=entries))
    acked += [i for i, r in zip(ids, reply.results, strict=True) if r.HasField("ok")]

    stream_ids = [[f"s-{client}-{m}-{i}" for i in range(25)] for m in range(2)]

    async def requests() -> AsyncIterator[gateway_pb2.PublishBatchRequest]:
        for chunk in stream_ids:
            yield gateway_pb2.PublishBatchRequest(
                entries=[request(f"k{client}", event_id=i) for i in chunk]
            )

    chunks = iter(stream_ids)
    async for response in stub.PublishStream(requests()):
        chunk = next(chunks)
        acked += [i for i, r in zip(chunk, response.results, strict=True) if r.HasField("ok")]
    return acked


async def _stored_ids(server: NatsServer) -> set[str]:
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        last = (await js.stream_info("ORDERS")).state.last_seq
        found = set()
        for seq in range(1, last + 1):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                msg = await js.get_msg("ORDERS", seq)
                found.add((msg.headers or {}).get(wire.MSG_ID, ""))
        return found
    finally:
        await nc.close()


async def _power_loss_run(
    tmp_path: Path, gateway_config: GatewayConfig, durability: Durability
) -> tuple[int, int]:
    """(acknowledged, survived) after publishing and cutting the power."""
    async with lazyfs(tmp_path / "fs") as (mnt, disk):
        server = NatsServer(mnt / "nats", sync_always=durability == "fsync")
        server.start()
        try:
            config = dataclasses.replace(gateway_config, nats_url=server.url, durability=durability)
            async with (
                serving(config) as gateway,
                grpc.aio.insecure_channel(gateway.address) as channel,
            ):
                # The stream exists on disk before the test starts (`sync` after creation).
                os.mkdir(mnt / ".lazyfs-sync")
                os.rmdir(mnt / ".lazyfs-sync")
                stub = gateway_pb2_grpc.EventGatewayStub(channel)
                results = await asyncio.gather(*(_publish(stub, c) for c in range(CLIENTS)))
                server.kill()  # power loss: no clean shutdown, nothing more written
        finally:
            server.kill()
    acked = {i for ids in results for i in ids}
    after = NatsServer(disk / "nats")
    after.start()
    try:
        stored = await eventually(lambda: _stored_ids(after), what="the stream after restart")
    finally:
        after.stop()
    return len(acked), len(acked & stored)


async def test_lazy_sync_loses_acknowledged_events(
    tmp_path: Path, gateway_config: GatewayConfig
) -> None:
    acked, survived = await _power_loss_run(tmp_path, gateway_config, "lazy")
    print(f"lazy: acknowledged {acked}, survived {survived}")
    assert acked == CLIENTS * 110
    assert survived < acked


async def test_fsync_loses_no_acknowledged_event(
    tmp_path: Path, gateway_config: GatewayConfig
) -> None:
    acked, survived = await _power_loss_run(tmp_path, gateway_config, "fsync")
    print(f"fsync: acknowledged {acked}, survived {survived}")
    assert acked == CLIENTS * 110
    assert survived == acked
