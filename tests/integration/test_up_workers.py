"""`jetgate up` never runs on with a dead worker (issue 18, defect 10), as a real process:
a taken worker metrics port is moved past, a killed worker comes back, and a worker that
cannot start makes `jetgate up` exit non-zero with the reason."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.embedded import free_port
from tests.integration.jetgate_up import WAIT, alive, read_banner, start_up
from tests.support.eventually import eventually


@pytest.fixture
def held_worker_port() -> Iterator[tuple[int, int]]:
    """(gateway metrics port M, M + 1) where M + 1, the billing worker's port, is held by
    another process, as when 9465 is taken and you `make run`."""
    while True:
        port = free_port()
        with socket.socket() as holder:
            try:
                holder.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            holder.listen()
            yield port, port + 1
            return


async def _collect(out: asyncio.StreamReader, into: list[str]) -> None:
    while line := await out.readline():
        into.append(line.decode())


async def test_up_moves_past_a_taken_worker_port_and_restarts_a_killed_worker(
    tmp_path: Path, held_worker_port: tuple[int, int]
) -> None:
    metrics, taken = held_worker_port
    proc = await start_up(tmp_path, args=("--metrics-listen", f"127.0.0.1:{metrics}"))
    assert proc.stdout is not None
    lines: list[str] = []
    collect: asyncio.Task[None] | None = None
    try:
        banner = await read_banner(proc.stdout)  # every worker ready
        collect = asyncio.create_task(_collect(proc.stdout, lines))
        moved = re.search(
            rf"group billing: Prometheus metrics at http://127\.0\.0\.1:(\d+)/metrics "
            rf"\(127\.0\.0\.1:{taken} was taken\)",
            banner,
        )
        assert moved, banner
        assert int(moved.group(1)) != taken
        workers = dict(re.findall(r"(consumers\.demo:\w+)  pid (\d+)", banner))
        assert set(workers) == {"consumers.demo:billing", "consumers.demo:shipping"}, banner

        billing = int(workers["consumers.demo:billing"])
        os.kill(billing, signal.SIGKILL)

        def restarted() -> int:
            text = "".join(lines)
            assert f"worker consumers.demo:billing (pid {billing}) was killed by signal 9" in text
            found = re.search(r"worker consumers\.demo:billing \(pid (\d+)\) ready again", text)
            assert found, text
            return int(found.group(1))

        again = await eventually(restarted, within=WAIT)
        assert again != billing
        assert alive(again)
        assert proc.returncode is None  # jetgate up runs on, whole

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), WAIT) == 0
        await asyncio.wait_for(collect, WAIT)
        assert f"worker consumers.demo:billing (pid {again}) stopped with code 0" in "".join(lines)
        assert not alive(again)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if collect is not None:
            await asyncio.wait_for(collect, WAIT)


async def test_up_exits_1_when_a_worker_cannot_start(tmp_path: Path) -> None:
    proc = await start_up(
        tmp_path, args=("--workers", "consumers.demo:billing,no_such_module:group")
    )
    assert proc.stdout is not None
    try:
        code = await asyncio.wait_for(proc.wait(), WAIT)
        output = (await proc.stdout.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 1, output
    assert "cannot load 'no_such_module:group'" in output  # the worker's own reason
    assert re.search(
        r"jetgate: worker no_such_module:group \(pid \d+\) exited with code 2 before it was "
        r"ready",
        output,
    ), output
    assert "listening on" not in output.split("jetgate: worker")[-1]
    assert "grpcurl" not in output  # no banner: nothing claims the pipeline runs
