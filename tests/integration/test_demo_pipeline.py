"""The demo pipeline (consumers/demo.py) with real worker processes, one killed mid-run.

OrderPlaced --billing (2 workers)--> OrderPaid --shipping (1 worker)--> OrderShipped, the
follow-ups published through the gateway's gRPC API. A billing worker killed with SIGKILL
while it handles events leaves them unacknowledged; after ack_wait (2 s here) JetStream
redelivers them to the other billing worker, whose OrderPaid carries the same derived
event id, so the stream de-duplicates any the killed worker had already published: one
OrderPaid and one OrderShipped per order, whatever the timing.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from gateway.server import Gateway
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.conftest import request
from tests.support.eventually import eventually

ORDERS = 300
FIRST = 200  # published before the kill, the rest after it
KILL_AFTER_PAID = 10
WAIT = 30.0  # s, the bound of every wait
POLL = 0.01  # s


class Workers:
    """`python -m consumers consume` processes, each logging to its own file."""

    def __init__(self, nats_url: str, gateway: str, logs: Path) -> None:
        self.nats_url = nats_url
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("JETGATE_")}
        self.env["JETGATE_GATEWAY"] = gateway
        self.logs = logs
        self.procs: list[tuple[asyncio.subprocess.Process, Path]] = []

    async def start(self, group: str) -> asyncio.subprocess.Process:
        log = self.logs / f"{group}-{len(self.procs)}.log"
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            proc = await asyncio.create_subprocess_exec(
                *(sys.executable, "-W", "error", "-m", "consumers", "consume"),
                f"consumers.demo:{group}",
                *("--nats-url", self.nats_url, "--ack-wait", "2", "--metrics-listen", ""),
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
            )
        finally:
            os.close(fd)
        self.procs.append((proc, log))
        return proc

    def log(self, proc: asyncio.subprocess.Process) -> str:
        return next(path for p, path in self.procs if p is proc).read_text()

    async def stop_all(self) -> None:
        for proc, _ in self.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.fixture
async def workers(nats_url: str, gateway: Gateway, tmp_path: Path) -> AsyncIterator[Workers]:
    started = Workers(nats_url, gateway.address, tmp_path)
    try:
        yield started
    finally:
        await started.stop_all()


async def subject_counts(js: JetStreamContext, event_type: str) -> dict[str, int]:
    info = await js.stream_info("ORDERS", subjects_filter=f"orders.{event_type}.>")
    return dict(info.state.subjects or {})


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """`eventually(condition)` within WAIT, its failure naming `what`."""
    await eventually(condition, within=WAIT, interval=POLL, what=what)


async def publish(stub: gateway_pb2_grpc.EventGatewayAsyncStub, keys: list[str]) -> None:
    reply = await stub.PublishBatch(
        gateway_pb2.PublishBatchRequest(entries=[request(key) for key in keys]), timeout=WAIT
    )
    assert all(result.HasField("ok") for result in reply.results), reply


async def test_each_order_is_paid_and_shipped_once_though_a_billing_worker_is_killed(
    nc: Client, stub: gateway_pb2_grpc.EventGatewayAsyncStub, workers: Workers
) -> None:
    js = nc.jetstream()
    keys = [f"o-{i}" for i in range(ORDERS)]

    async def pulling(group: str) -> bool:
        try:
            return bool((await js.consumer_info("ORDERS", group)).num_waiting >= 1)
        except NotFoundError:
            return False

    async def settled(group: str) -> bool:
        info = await js.consumer_info("ORDERS", group)
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    # The victim alone first: once the group has a pull request waiting, it is the
    # victim's, so the victim holds events of the first batch when it is killed.
    victim = await workers.start("billing")
    await until(lambda: pulling("billing"), "the first billing worker pulling")
    survivor = await workers.start("billing")
    shipper = await workers.start("shipping")
    await publish(stub, keys[:FIRST])

    async def some_paid() -> bool:
        return sum((await subject_counts(js, "OrderPaid")).values()) >= KILL_AFTER_PAID

    await until(some_paid, f"{KILL_AFTER_PAID} orders paid")
    victim.send_signal(signal.SIGKILL)
    assert await victim.wait() == -signal.SIGKILL
    await publish(stub, keys[FIRST:])

    async def all_shipped() -> bool:
        return len(await subject_counts(js, "OrderShipped")) == ORDERS

    await until(all_shipped, f"{ORDERS} orders shipped")
    # Also the events the victim had published OrderPaid for but not acknowledged.
    await until(lambda: settled("billing"), "billing acknowledged everything")
    await until(lambda: settled("shipping"), "shipping acknowledged everything")
    for event_type in ("OrderPlaced", "OrderPaid", "OrderShipped"):
        counts = await subject_counts(js, event_type)
        assert counts == {f"orders.{event_type}.{key}": 1 for key in keys}, event_type
    assert (await js.stream_info("DLQ")).state.messages == 0

    for proc in (survivor, shipper):
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), WAIT) == 0, workers.log(proc)
    # The survivor handled the events the victim had taken but not acknowledged.
    stats = re.search(r"group billing: stopped; WorkerStats\((.*)\)", workers.log(survivor))
    assert stats, workers.log(survivor)
    redelivered = re.search(r"redelivered=(\d+)", stats.group(1))
    assert redelivered
    assert int(redelivered.group(1)) >= 1, stats.group(1)
