"""Worker processes of one consumer group against a real nats-server (issue #3).

Every worker is a real `python -m consumers consume tests.consumers.groups:recorder`
process; its handler appends `<pid> <event id> <attempt>` to a file when it starts and
when it finishes an event (see groups.py), which is what the assertions read. Waits are
bounded polls; the assertions are about which events were handled how often and by whom,
never about how fast.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError

from jetgate import wire
from tests.consumers import groups
from tests.consumers.conftest import STREAM, heartbeats, store
from tests.support.eventually import eventually

REPO = Path(__file__).resolve().parents[2]
GROUP = groups.recorder.name
TARGET = f"tests.consumers.groups:{GROUP}"
WAIT = 30.0  # s, the bound of every wait for workers to get somewhere


class Line(NamedTuple):
    pid: int
    event_id: str
    attempt: int


def read_lines(path: Path) -> list[Line]:
    """The complete lines of a record file (none when it does not exist yet)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    complete = text[: text.rfind("\n") + 1]
    return [
        Line(int(pid), event_id, int(attempt))
        for pid, event_id, attempt in (line.split() for line in complete.splitlines())
    ]


def _open_log(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


@dataclass
class WorkerProcess:
    process: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        return _read_text(self.log)


class Workers:
    """Starts worker processes of `recorder` and stops every one of them (by pid)."""

    def __init__(self, nats_url: str, directory: Path) -> None:
        self.nats_url = nats_url
        self.directory = directory
        self.handled = directory / "handled.txt"
        self.started = directory / "started.txt"
        self.processes: list[WorkerProcess] = []

    async def start(
        self, *, sleep: float = 0.0, concurrency: int | None = None, ack_wait: float | None = None
    ) -> WorkerProcess:
        command = [sys.executable, "-W", "error", "-m", "consumers", "consume", TARGET]
        command += ["--nats-url", self.nats_url, "--metrics-listen", "127.0.0.1:0"]
        if concurrency is not None:
            command += ["--concurrency", str(concurrency)]
        if ack_wait is not None:
            command += ["--ack-wait", str(ack_wait)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("JETGATE_")}
        env.update(
            {
                groups.RECORD_ENV: str(self.handled),
                groups.STARTED_ENV: str(self.started),
                groups.SLEEP_ENV: str(sleep),
            }
        )
        log = self.directory / f"worker-{len(self.processes)}.log"
        fd = _open_log(log)
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                cwd=REPO,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=fd,
            )
        finally:
            os.close(fd)
        worker = WorkerProcess(process, log)
        self.processes.append(worker)
        return worker

    async def terminate(self, worker: WorkerProcess) -> int:
        """SIGTERM, then its exit code (killed when it has not exited after WAIT)."""
        worker.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(worker.process.wait(), WAIT)
        except TimeoutError:
            worker.process.kill()
            await worker.process.wait()
            raise AssertionError(f"worker {worker.pid} ignored SIGTERM\n{self.logs()}") from None

    async def kill(self, worker: WorkerProcess) -> int:
        worker.process.kill()
        return await asyncio.wait_for(worker.process.wait(), WAIT)

    async def close(self) -> None:
        for worker in self.processes:
            if worker.process.returncode is None:
                worker.process.kill()
            await worker.process.wait()

    def handled_lines(self) -> list[Line]:
        return read_lines(self.handled)

    def started_lines(self) -> list[Line]:
        return read_lines(self.started)

    def logs(self) -> str:
        return "\n".join(
            f"--- worker {w.pid} (exit {w.process.returncode}):\n{w.stderr()[-3000:]}"
            for w in self.processes
        )


@pytest.fixture
async def workers(nats_url: str, tmp_path: Path) -> AsyncIterator[Workers]:
    pool = Workers(nats_url, tmp_path)
    try:
        yield pool
    finally:
        await pool.close()


async def until(check: Callable[[], bool | Awaitable[bool]], what: str, pool: Workers) -> None:
    """`eventually(check)`; its failure names `what` and shows the workers' logs."""
    try:
        await eventually(check, within=WAIT, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{pool.logs()}") from exc


async def consumer(js: JetStreamContext) -> ConsumerInfo | None:
    try:
        info: ConsumerInfo = await js.consumer_info(STREAM, GROUP)
    except NotFoundError:
        return None
    return info


async def pulling(js: JetStreamContext, pool: Workers, count: int) -> None:
    """Until the group's consumer has `count` waiting pull requests (one per idle worker)."""

    async def ready() -> bool:
        info = await consumer(js)
        return info is not None and (info.num_waiting or 0) >= count

    await until(ready, f"{count} workers pulling", pool)


async def publish(js: JetStreamContext, count: int) -> list[str]:
    """Store `count` OrderPlaced events (keys o-0...), 200 publishes at a time; their ids."""
    ids = [wire.new_event_id() for _ in range(count)]
    for first in range(0, count, 200):
        await asyncio.gather(
            *(store(js, f"o-{i}", event_id=ids[i]) for i in range(first, min(first + 200, count)))
        )
    return ids


async def test_two_workers_share_2000_events_each_handled_exactly_once(
    js: JetStreamContext, workers: Workers
) -> None:
    first = await workers.start()
    second = await workers.start()
    await pulling(js, workers, 2)  # both take part from the first event on

    ids = await publish(js, 2000)
    await until(lambda: len(workers.handled_lines()) >= len(ids), "2000 events handled", workers)
    assert await workers.terminate(first) == 0
    assert await workers.terminate(second) == 0

    handled = workers.handled_lines()  # read after both drained: includes any late duplicate
    times = Counter(line.event_id for line in handled)
    assert set(times) == set(ids)
    assert set(times.values()) == {1}, [i for i, n in times.items() if n > 1][:10]
    assert {line.attempt for line in handled} == {1}
    share = Counter(line.pid for line in handled)
    assert set(share) == {first.pid, second.pid}
    # More than one full pull each (16 slots + 16 prefetched): both kept pulling all along.
    assert min(share.values()) > 2 * groups.recorder.concurrency, share
    info = await consumer(js)
    assert info is not None
    assert (info.num_ack_pending, info.num_redelivered, info.num_pending) == (0, 0, 0)


async def test_events_of_a_killed_worker_are_redelivered_to_another_one(
    nc: Client, js: JetStreamContext, workers: Workers
) -> None:
    ack_wait = 3.0
    # The victim's handlers would sleep a minute: it fills its 8 slots, and its prefetch
    # (events received, waiting for a slot), and then holds them all.
    victim = await workers.start(sleep=60, concurrency=8, ack_wait=ack_wait)
    await pulling(js, workers, 1)
    ids = await publish(js, 100)

    def victim_started() -> set[str]:
        return {line.event_id for line in workers.started_lines() if line.pid == victim.pid}

    held = 0

    async def victim_full() -> bool:
        nonlocal held
        info = await consumer(js)
        if info is None or len(victim_started()) < 8 or info.num_waiting:
            return False  # a waiting pull: it still has room for more
        held = info.num_ack_pending or 0
        return held + (info.num_pending or 0) == len(ids)

    await until(victim_full, "the victim holding all it can", workers)
    assert held >= 8
    survivor = await workers.start(ack_wait=ack_wait)

    def survivor_handled() -> dict[str, list[int]]:
        attempts: dict[str, list[int]] = {}
        for line in workers.handled_lines():
            assert line.pid == survivor.pid, line  # the victim never finishes one
            attempts.setdefault(line.event_id, []).append(line.attempt)
        return attempts

    # With every slot busy for ack_wait and no handler finishing, the victim hands its
    # prefetched events back (nak, no delay): the survivor handles all but the 8 running.
    rest = len(ids) - 8
    await until(lambda: len(survivor_handled()) >= rest, f"the other {rest} handled", workers)
    # While the victim lives, its in_progress heartbeats (every ack_wait/2) keep the events
    # its handlers run from being redelivered, however long they take: twice ack_wait, that
    # is five heartbeats for each of the 8 events it runs.
    async with heartbeats(nc, GROUP) as beats:
        await until(
            lambda: len(beats) >= 8 and min(beats.values()) >= 5,
            "5 heartbeats for each of the 8 events running",
            workers,
        )
    assert len(survivor_handled()) == rest
    started = victim_started()
    assert len(started) == 8  # exactly its concurrency
    assert not started & set(survivor_handled())
    info = await consumer(js)
    assert info is not None
    assert (info.num_ack_pending, info.num_pending) == (8, 0)

    assert await workers.kill(victim) == -signal.SIGKILL
    await until(lambda: len(survivor_handled()) == len(ids), "all 100 events handled", workers)
    assert await workers.terminate(survivor) == 0

    attempts = survivor_handled()
    assert set(attempts) == set(ids)  # none lost
    assert all(len(seen) == 1 for seen in attempts.values()), attempts  # and once each
    redelivered = {event_id for event_id, seen in attempts.items() if seen[0] >= 2}
    assert len(redelivered) == held
    assert started <= redelivered  # those in its handlers, and those it had prefetched
    assert f"WorkerStats(processed=100, failed=0, redelivered={held}," in survivor.stderr()
    info = await consumer(js)
    assert info is not None
    assert (info.num_ack_pending, info.num_redelivered) == (0, 0)


async def test_sigterm_finishes_in_flight_events_and_exits_0(
    js: JetStreamContext, workers: Workers
) -> None:
    worker = await workers.start(sleep=0.25, concurrency=8)  # ack_wait 10 s: drain bound
    await pulling(js, workers, 1)
    ids = await publish(js, 200)  # 200 x 0.25 s over 8 slots: load for several seconds

    def mine(lines: list[Line]) -> set[str]:
        return {line.event_id for line in lines if line.pid == worker.pid}

    await until(lambda: len(mine(workers.handled_lines())) >= 16, "16 events handled", workers)
    done_before = mine(workers.handled_lines())
    in_flight = mine(workers.started_lines()) - done_before  # started before the signal
    assert await workers.terminate(worker) == 0

    stderr = worker.stderr()
    handled = workers.handled_lines()
    done = mine(handled)
    started = mine(workers.started_lines())
    assert in_flight, "no event was in flight at SIGTERM"
    assert in_flight <= done  # finished during the drain
    assert started == done  # nothing it began (or had prefetched) was dropped
    assert len(done) < len(ids)  # it stopped fetching: the rest is left for other workers
    assert f"group {GROUP}: stopped; WorkerStats(processed={len(done)}, failed=0," in stderr
    assert "in_flight=0)" in stderr
    assert "Traceback" not in stderr
    info = await consumer(js)
    assert info is not None
    assert info.num_ack_pending == 0  # everything it got was acknowledged...
    assert info.num_redelivered == 0
    assert info.num_pending == len(ids) - len(done)  # ...and it got only what it handled

    # A second worker drains the rest: no event comes a second time.
    successor = await workers.start()
    await until(lambda: len(workers.handled_lines()) >= len(ids), "200 events handled", workers)
    assert await workers.terminate(successor) == 0
    handled = workers.handled_lines()
    assert Counter(line.event_id for line in handled) == Counter(ids)
    assert {line.attempt for line in handled} == {1}
