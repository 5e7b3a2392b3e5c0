"""`jetgate serve --processes 2` as a real process in front of a real nats-server: both
gateway processes serve the one port, a kill -9'd one is restarted while clients that retry
with the same event ids lose and double nothing, and SIGTERM drains all (issue 11)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from nats.aio.client import Client

from jetgate.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import request
from tests.integration.jetgate_up import (
    REPO,
    WAIT,
    alive,
    jetgate,
    read_banner,
    read_rest,
    start_up,
)
from tests.support.eventually import eventually

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
PUBLISHES = "messaging_client_operation_duration_seconds_count"
# A channel of its own connection: channels with equal arguments share one by default.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@dataclass(slots=True)
class Served:
    """The running `jetgate serve --processes 2`: its address, children and output."""

    proc: asyncio.subprocess.Process
    address: str = ""
    pids: dict[int, int] = field(default_factory=dict)  # process number -> pid
    metrics: dict[int, str] = field(default_factory=dict)  # process number -> /metrics URL
    output: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.output)


@pytest.fixture
async def served(nats_url: str, tmp_path: Path) -> AsyncIterator[Served]:
    """`jetgate serve --processes 2` on free loopback ports, its banner read."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JETGATE_", "OTEL_"))}
    proc = await asyncio.create_subprocess_exec(
        *(jetgate(), "serve", "--config", str(REPO / "jetgate.toml"), "--processes", "2"),
        *("--nats-url", nats_url, "--listen", "127.0.0.1:0"),
        *("--metrics-listen", "127.0.0.1:0", "--publish-timeout", "3s", "--grace", "5"),
        cwd=tmp_path,
        env={**clean, "PYTHONWARNINGS": "error"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    running = Served(proc)

    async def read_all(out: asyncio.StreamReader) -> None:
        while line := await out.readline():  # always drained: logs never fill the pipe
            running.output.append(line.decode())

    reader = asyncio.create_task(read_all(proc.stdout))
    try:
        await eventually(lambda: "\nNATS: " in running.text, within=WAIT, what="the banner")
        banner = running.text
        listening = re.search(r"jetgate gateway listening on (\S+)", banner)
        assert listening is not None, banner
        running.address = listening.group(1)
        for n, pid, url in re.findall(r"gateway process (\d): pid (\d+), metrics (\S+)", banner):
            running.pids[int(n)], running.metrics[int(n)] = int(pid), url
        assert sorted(running.pids) == [1, 2], banner
        yield running
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await reader


def _publishes(url: str) -> float:
    """Publish calls one gateway process counted (its own /metrics)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(PUBLISHES))


async def _publishes_by_process(running: Served) -> dict[int, float]:
    return {n: await asyncio.to_thread(_publishes, url) for n, url in running.metrics.items()}


async def _stop(running: Served) -> None:
    """SIGTERM: every process drains, the supervisor exits 0, no child is left."""
    running.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(WAIT):
        assert await running.proc.wait() == 0, running.text
    assert "jetgate.processes: stopped" in running.text
    for n, pid in running.pids.items():
        assert f"gateway process {n} (pid {pid}) stopped with code 0" in running.text
        assert not alive(pid)


async def _until_each_process_served(running: Served) -> None:
    """Publish on new connections until every process counted a publish: the kernel spreads
    new connections over the processes (established ones stay where they are)."""
    channels: list[grpc.aio.Channel] = []

    async def publish_on_a_new_connection() -> bool:
        channel = grpc.aio.insecure_channel(running.address, options=OWN_CONNECTION)
        channels.append(channel)
        reply = await gateway_pb2_grpc.EventGatewayStub(channel).Publish(
            request(f"o-{len(channels)}"), timeout=WAIT
        )
        assert reply.sequence > 0
        counts = await _publishes_by_process(running)
        return all(count > 0 for count in counts.values())

    try:
        await eventually(publish_on_a_new_connection, within=WAIT)
    finally:
        for channel in channels:
            await channel.close()


async def test_both_processes_serve_the_one_port(served: Served) -> None:
    await _until_each_process_served(served)
    for n, pid in served.pids.items():
        assert f"gateway process {n}/2 (pid {pid}) serving on {served.address}" in served.text
    # SIGHUP (reload) goes on to the processes: the supervisor and both of them live on
    # (unhandled, it would end the supervisor, and its children with it).
    served.proc.send_signal(signal.SIGHUP)
    await _until_each_process_served(served)
    assert served.proc.returncode is None
    assert all(alive(pid) for pid in served.pids.values())
    await _stop(served)  # the same pids stop with code 0: none was restarted


async def test_a_taken_port_stops_start_up_with_exit_code_1(nats_url: str) -> None:
    with socket.socket() as taken:  # no SO_REUSEPORT: nobody may share it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            *(jetgate(), "serve", "--config", str(REPO / "jetgate.toml"), "--processes", "2"),
            *("--nats-url", nats_url, "--listen", f"127.0.0.1:{port}", "--metrics-listen", ""),
            env={k: v for k, v in os.environ.items() if not k.startswith(("JETGATE_", "OTEL_"))},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(WAIT):
            output, _ = await proc.communicate()
    assert proc.returncode == 1, output
    assert f"jetgate: cannot listen on 127.0.0.1:{port}" in output.decode()


async def test_jetgate_up_runs_processes_and_workers(tmp_path: Path) -> None:
    proc = await start_up(tmp_path, args=["--processes", "2"])
    assert proc.stdout is not None
    try:
        banner = await read_banner(proc.stdout)  # printed once the workers pull events
        rest = asyncio.create_task(read_rest(proc.stdout))
        pids = [int(pid) for pid in re.findall(r"gateway process \d: pid (\d+), metrics", banner)]
        assert len(pids) == 2, banner
        listening = re.search(r"jetgate gateway listening on (\S+)", banner)
        assert listening is not None
        async with grpc.aio.insecure_channel(listening.group(1)) as channel:
            reply = await gateway_pb2_grpc.EventGatewayStub(channel).Publish(
                request("o-42"), timeout=WAIT
            )
        assert reply.sequence == 1
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), WAIT) == 0
        log = await asyncio.wait_for(rest, WAIT)
        # Workers first (their follow-ups need the gateway), then the gateway processes.
        first_gateway = log.index("gateway process 1 (pid")
        assert log.index("worker consumers.demo:billing (pid") < first_gateway
        assert all(not alive(pid) for pid in pids)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_kill_9_of_one_process_under_load_loses_nothing(served: Served, nc: Client) -> None:
    acknowledged: list[str] = []
    retried = 0
    unexpected: list[str] = []

    async def publish_forever(client: int) -> None:
        nonlocal retried
        async with grpc.aio.insecure_channel(served.address, options=OWN_CONNECTION) as channel:
            stub = gateway_pb2_grpc.EventGatewayStub(channel)
            for batch in range(100_000):  # bounded; cancelled long before
                pending = [f"c{client}-{batch}-{i}" for i in range(20)]
                while pending:  # the same ids until every one is acknowledged
                    entries = [request(f"k-{i}", event_id=i) for i in pending]
                    try:
                        reply = await stub.PublishBatch(
                            gateway_pb2.PublishBatchRequest(entries=entries), timeout=10
                        )
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() not in RETRYABLE:
                            unexpected.append(f"{exc.code()}: {exc.details()}")
                        retried += 1
                        await asyncio.sleep(0.05)
                        continue
                    again = []
                    for event_id, result in zip(pending, reply.results, strict=True):
                        if result.HasField("ok"):
                            acknowledged.append(event_id)
                        else:
                            if result.error.code not in {c.value[0] for c in RETRYABLE}:
                                unexpected.append(f"{event_id}: {result.error}")
                            again.append(event_id)
                    retried += bool(again)
                    pending = again

    clients = [asyncio.create_task(publish_forever(c)) for c in range(8)]
    try:
        await eventually(lambda: len(acknowledged) >= 1000, within=WAIT)
        counts = await _publishes_by_process(served)
        victim = max(counts, key=lambda n: counts[n])  # the busier one: it has RPCs in flight
        killed = served.pids[victim]
        os.kill(killed, signal.SIGKILL)
        ready_again = re.compile(rf"gateway process {victim} \(pid (\d+)\) ready again")

        def restarted() -> int:
            match = ready_again.search(served.text)
            assert match is not None
            return int(match.group(1))

        served.pids[victim] = await eventually(restarted, within=WAIT)
        assert f"gateway process {victim} (pid {killed}) was killed by signal 9" in served.text
        before = len(acknowledged)
        await eventually(lambda: len(acknowledged) >= before + 1000, within=WAIT)
    finally:
        for task in clients:
            task.cancel()
        for task in clients:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert not unexpected, unexpected[:5]
    assert retried > 0  # the kill really hit publishes in flight
    await _until_each_process_served(served)  # the restarted one too (its counts start at 0)
    await _stop(served)

    # Every acknowledged event is stored exactly once; nothing else is stored.
    js = nc.jetstream()
    stored: Counter[str] = Counter()
    consumer = await js.pull_subscribe("orders.>", durable=None, stream="ORDERS")
    remaining = (await js.stream_info("ORDERS")).state.messages
    while remaining > 0:
        msgs = await consumer.fetch(min(remaining, 1000), timeout=5)
        for msg in msgs:
            stored[(msg.headers or {})["Nats-Msg-Id"]] += 1
            await msg.ack()
        remaining -= len(msgs)
    assert set(acknowledged) <= set(stored), f"lost {len(set(acknowledged) - set(stored))}"
    doubled = [event_id for event_id, count in stored.items() if count > 1]
    assert not doubled, f"{len(doubled)} stored twice, e.g. {doubled[:3]}"
