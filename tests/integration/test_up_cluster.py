"""`jetgate up --cluster 3`: three embedded nats-servers in one JetStream cluster, the
streams replicated on all three, the banner listing the nodes; SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import grpc
import nats

from jetgate.v1 import gateway_pb2_grpc
from tests.integration.conftest import request
from tests.integration.jetgate_up import WAIT, alive, read_banner, read_rest, start_up


async def test_jetgate_up_cluster_3_replicates_the_streams_on_three_nodes(tmp_path: Path) -> None:
    proc = await start_up(tmp_path, args=("--cluster", "3"))
    assert proc.stdout is not None
    rest: asyncio.Task[str] | None = None
    try:
        banner = await read_banner(proc.stdout)
        rest = asyncio.create_task(read_rest(proc.stdout))
        nodes = re.findall(r"(jetgate-n\d): (nats://127\.0\.0\.1:\d+), pid (\d+)", banner)
        assert [name for name, _, _ in nodes] == ["jetgate-n1", "jetgate-n2", "jetgate-n3"]
        assert "kill -9" in banner
        assert "R3 streams" in banner
        address = re.search(r"listening on (127\.0\.0\.1:\d+)", banner)
        assert address, banner
        async with grpc.aio.insecure_channel(address.group(1)) as channel:
            reply = await gateway_pb2_grpc.EventGatewayStub(channel).Publish(
                request("o-1"), timeout=WAIT
            )
        assert reply.sequence == 1
        nc = await nats.connect([url for _, url, _ in nodes])
        try:
            info = await nc.jetstream().stream_info("ORDERS")
        finally:
            await nc.close()
        assert info.config.num_replicas == 3
        assert info.cluster is not None
        assert info.cluster.leader in {name for name, _, _ in nodes}
        for n in range(1, 4):
            assert (tmp_path / "data" / "nats" / f"n{n}" / "jetstream").is_dir()

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), WAIT) == 0
        for _, _, pid in nodes:
            assert not alive(int(pid)), pid
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if rest is not None:
            await asyncio.wait_for(rest, WAIT)
