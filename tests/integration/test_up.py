"""`jetgate up` (what `make run` runs) as a real process: gateway, nats-server and the demo
workers come up, an OrderPlaced flows through the pipeline, and SIGTERM stops everything."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import urllib.request
from pathlib import Path

import grpc
import nats
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import gateway_pb2_grpc
from tests.integration.conftest import request
from tests.integration.jetgate_up import WAIT, alive, read_banner, read_rest, start_up
from tests.support.eventually import eventually


async def _last(nc: Client, subject: str) -> tuple[int, bytes] | None:
    try:
        msg = await nc.jetstream().get_last_msg("ORDERS", subject)
    except NotFoundError:
        return None
    assert msg.seq is not None
    return msg.seq, msg.data or b""


def _scrape(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, no proxy
    with opener.open(url, timeout=10) as reply:
        return str(reply.read().decode())


async def _wait_for(nc: Client, subject: str) -> tuple[int, bytes]:
    async def check() -> tuple[int, bytes]:
        found = await _last(nc, subject)
        assert found is not None, f"nothing stored on {subject}"
        return found

    return await eventually(check, within=WAIT)


async def test_jetgate_up_runs_the_demo_pipeline_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    proc = await start_up(tmp_path)
    assert proc.stdout is not None
    rest: asyncio.Task[str] | None = None
    try:
        banner = await read_banner(proc.stdout)
        rest = asyncio.create_task(read_rest(proc.stdout))
        address = re.search(r"listening on (127\.0\.0\.1:\d+)", banner)
        nats_url = re.search(r"NATS: (nats://127\.0\.0\.1:(\d+)) \(embedded, pid (\d+)", banner)
        workers = dict(re.findall(r"(consumers\.demo:\w+)  pid (\d+)", banner))
        assert address, banner
        assert nats_url, banner
        assert set(workers) == {"consumers.demo:billing", "consumers.demo:shipping"}, banner
        assert "grpcurl -plaintext" in banner
        assert "stream get ORDERS --last-for orders.OrderPlaced.o-42" in banner
        assert "consumer info ORDERS billing" in banner
        metrics = re.search(r"Prometheus metrics: (http://127\.0\.0\.1:\d+/metrics)", banner)
        assert metrics, banner
        assert "Tracing: off" in banner  # no OTEL_EXPORTER_OTLP_ENDPOINT here
        # The banner waits for the workers: both pull events before it is printed.
        assert "group billing: consumer ready" in banner
        assert "group shipping: consumer ready" in banner
        assert "stream get ORDERS --last-for orders.OrderShipped.o-42" in banner

        async with grpc.aio.insecure_channel(address.group(1)) as channel:
            reply = await gateway_pb2_grpc.EventGatewayStub(channel).Publish(
                request("o-42"), timeout=10
            )
        assert reply.subject == "orders.OrderPlaced.o-42"
        assert reply.sequence == 1
        assert (tmp_path / "data" / "nats" / "jetstream").is_dir()

        nc = await nats.connect(nats_url.group(1))
        try:
            shipped = await _wait_for(nc, "orders.OrderShipped.o-42")
            paid = await _wait_for(nc, "orders.OrderPaid.o-42")
        finally:
            await nc.close()
        assert reply.sequence < paid[0] < shipped[0]
        assert orders_pb2.OrderPaid.FromString(paid[1]).order_id == "o-42"
        assert orders_pb2.OrderShipped.FromString(shipped[1]).order_id == "o-42"
        exposition = await asyncio.to_thread(_scrape, metrics.group(1))
        assert "messaging_client_sent_messages_total{" in exposition
        assert 'jetgate_event_type="jetgate.examples.orders.v1.OrderShipped"' in exposition

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), WAIT) == 0
        log = await asyncio.wait_for(rest, WAIT)
        # Workers first (drained, exit 0), then the gateway, then the embedded nats-server.
        gateway_stops = log.index("stopping: no new RPCs")
        for target, pid in workers.items():
            assert log.index(f"worker {target} (pid {pid}) stopped with code 0") < gateway_stops
        for group in ("billing", "shipping"):  # each worker serves its own /metrics
            assert re.search(
                rf"group {group}: Prometheus metrics at http://127\.0\.0\.1:\d+", banner
            )
        for pid in [int(nats_url.group(3)), *map(int, workers.values())]:
            assert not alive(pid), pid
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", int(nats_url.group(2)))) != 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if rest is not None:
            await asyncio.wait_for(rest, WAIT)
