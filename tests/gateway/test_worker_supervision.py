"""`jetgate up`'s workers are supervised: a worker that dies is restarted with backoff, one
that keeps dying gives up loudly (issue 18, defect 10). Real worker processes, real NATS."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from gateway.workers import WorkerFailed, WorkerProcesses
from tests.support.eventually import eventually


@pytest.fixture
async def billing(nats_url: str, nc: Client) -> AsyncIterator[WorkerProcesses]:
    """One demo billing worker, started and ready; restarts after 50 ms, gives up after the
    second death within a minute."""
    await nc.jetstream().add_stream(name="ORDERS", subjects=["orders.>"])
    workers = WorkerProcesses(
        ["consumers.demo:billing"],
        nats_url=nats_url,
        gateway_address="127.0.0.1:1",
        max_restarts=1,
        backoff=(0.05,),
    )
    workers.start()
    try:
        await workers.wait_ready()
        yield workers
    finally:
        await workers.stop(grace=10)


def _pid(workers: WorkerProcesses) -> int:
    [(_, pid)] = workers.pids
    return pid


async def test_a_killed_worker_is_restarted(
    billing: WorkerProcesses, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jetgate.workers")
    first = _pid(billing)
    os.kill(first, signal.SIGKILL)

    def restarted_and_ready() -> None:
        assert _pid(billing) != first
        assert f"worker consumers.demo:billing (pid {_pid(billing)}) ready again" in caplog.text

    await eventually(restarted_and_ready)
    assert f"worker consumers.demo:billing (pid {first}) was killed by signal 9" in caplog.text
    assert "worker consumers.demo:billing: restart 1 of at most 1 within 60s" in caplog.text
    failed = asyncio.ensure_future(billing.failed())
    await asyncio.sleep(0)
    assert not failed.done()  # still running: nothing to give up on
    failed.cancel()


async def test_a_worker_that_keeps_dying_gives_up(billing: WorkerProcesses) -> None:
    first = _pid(billing)
    os.kill(first, signal.SIGKILL)

    def restarted() -> int:
        assert _pid(billing) != first
        return _pid(billing)

    second = await eventually(restarted)
    os.kill(second, signal.SIGKILL)
    failure = await asyncio.wait_for(billing.failed(), 30)
    assert isinstance(failure, WorkerFailed)
    assert "worker consumers.demo:billing died 2 times within 60s" in str(failure)
    assert "giving up" in str(failure)
