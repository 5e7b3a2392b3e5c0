"""The parts of a fault test, each a real process: nats-server, `jetgate serve`, workers
(`python -m consumers consume tests.faults.groups:faulty`), and a publishing client.

`Cluster` starts them and stops every one by pid; `Load` publishes a fixed set of events
through the gateway, retrying each refused one with the same id (as clients are told to)
until all are acknowledged; `Cluster.check_invariants` asserts what must hold after any
fault: every acknowledged event stored exactly once, every stored event handled or
dead-lettered, every process back to healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import nats
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from gateway.embedded import NatsServer, free_port
from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc
from tests.faults import groups
from tests.integration.conftest import request
from tests.integration.jetgate_up import alive, jetgate
from tests.support.eventually import eventually

REPO = Path(__file__).resolve().parents[2]
STREAM = "ORDERS"
GROUP = groups.faulty.name
SERVICE = "jetgate.v1.EventGateway"
SERVING = int(health_pb2.HealthCheckResponse.SERVING)
# Refusals a client retries with the same event id (the gateway's contract).
CODES = {code.value[0]: code for code in grpc.StatusCode}
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JETGATE_", "OTEL_"))}
    env["PYTHONWARNINGS"] = "error"
    env.update(extra)
    return env


@dataclass
class Process:
    """A child process with its output in a log file."""

    name: str
    command: list[str]
    log: Path
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.command,
                cwd=REPO,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
            )
        finally:
            os.close(fd)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None and alive(self.pid)

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    async def kill(self) -> None:
        """SIGKILL (after SIGCONT is irrelevant: a stopped process dies of SIGKILL too)."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def stop(self) -> None:
        """SIGCONT + SIGTERM, SIGKILL when it has not exited after 30 s."""
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            await self.kill()

    def tail(self, chars: int = 3000) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return (
            f"--- {self.name} (pid {self.process.pid if self.process else '-'}):\n{text[-chars:]}"
        )


class Cluster:
    """nats-server, one `jetgate serve` and `workers` worker processes of group `faulty`."""

    def __init__(
        self,
        server: NatsServer,
        directory: Path,
        *,
        gateway_args: Iterable[str] = (),
        reject: bool = False,
    ) -> None:
        self.server = server
        self.directory = directory
        self.port = free_port()
        self.handled_file = directory / "handled.txt"
        self.started_file = directory / "started.txt"
        self.gateway = Process(
            "gateway",
            [
                *(jetgate(), "serve", "--config", str(REPO / "jetgate.toml")),
                *("--nats-url", server.url, "--listen", f"127.0.0.1:{self.port}"),
                *("--metrics-listen", "127.0.0.1:0", "--publish-timeout", "3s"),
                *gateway_args,
            ],
            directory / "gateway.log",
            _clean_env({}),
        )
        self.reject = reject
        self.workers: list[Process] = []
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = gateway_pb2_grpc.EventGatewayStub(self.channel)
        self.nc: Client | None = None

    async def start(self, workers: int = 2) -> None:
        await self.gateway.start()
        await self.gateway_serving()
        self.nc = await nats.connect(self.server.url, name="faults-checker")
        for _ in range(workers):
            await self.add_worker()
        await self.workers_pulling()

    async def add_worker(self) -> Process:
        worker = Process(
            f"worker-{len(self.workers)}",
            [
                *(sys.executable, "-W", "error", "-m", "consumers", "consume"),
                *("tests.faults.groups:faulty", "--nats-url", self.server.url),
                *("--metrics-listen", "127.0.0.1:0"),
            ],
            self.directory / f"worker-{len(self.workers)}.log",
            _clean_env(
                {
                    groups.HANDLED_ENV: str(self.handled_file),
                    groups.STARTED_ENV: str(self.started_file),
                    groups.REJECT_ENV: "1" if self.reject else "0",
                }
            ),
        )
        await worker.start()
        self.workers.append(worker)
        return worker

    async def close(self) -> None:
        await self.channel.close()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()
        for process in (*self.workers, self.gateway):
            await process.stop()

    def logs(self) -> str:
        return "\n".join(p.tail() for p in (self.gateway, *self.workers)) + (
            f"\n--- nats-server:\n{self.server.log_tail()}"
        )

    @property
    def js(self) -> nats.js.JetStreamContext:
        assert self.nc is not None
        return self.nc.jetstream()

    # -- health ------------------------------------------------------------------
    async def health(self) -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2)
        except grpc.aio.AioRpcError:
            return int(health_pb2.HealthCheckResponse.UNKNOWN)
        return int(reply.status)

    async def gateway_serving(self) -> None:
        async def serving() -> None:
            assert self.gateway.running, "gateway process is not running"
            assert await self.health() == SERVING, "gateway health is not SERVING"

        await self.eventually(serving, "gateway SERVING")

    async def workers_pulling(self) -> None:
        """Every worker process runs and the group's consumer has their pull requests."""

        async def pulling() -> None:
            assert all(w.running for w in self.workers), "a worker process is not running"
            info = await self.js.consumer_info(STREAM, GROUP)
            assert (info.num_waiting or 0) >= 1, f"no pull request waiting: {info}"

        await self.eventually(pulling, "workers pulling")

    async def eventually(self, check: object, what: str, within: float = 30.0) -> None:
        try:
            await eventually(check, within=within, what=what, retry_on=_RETRY_ON)  # type: ignore[arg-type]
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    # -- what is stored ----------------------------------------------------------
    async def stored_ids(self, stream: str = STREAM) -> list[str]:
        """The ce-id of every message in `stream`, in sequence order (all subjects)."""
        try:
            info = await self.js.stream_info(stream)
        except NotFoundError:
            return []
        ids: list[str] = []
        first, last = info.state.first_seq, info.state.last_seq
        for sequence in range(first, last + 1) if info.state.messages else ():
            try:
                message = await self.js.get_msg(stream, sequence)
            except NotFoundError:
                continue  # deleted (a redriven dead letter): not an event any more
            headers = message.headers or {}
            ids.append(str(headers.get(wire.CE_ID, "")))
        return ids

    def lines(self, path: Path) -> list[tuple[int, str, int]]:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return []
        complete = text[: text.rfind("\n") + 1]
        return [(int(p), e, int(a)) for p, e, a in (ln.split() for ln in complete.splitlines())]

    def handled(self) -> set[str]:
        return {event_id for _, event_id, _ in self.lines(self.handled_file)}

    async def check_invariants(self, acknowledged: Iterable[str]) -> None:
        """Every acknowledged event stored exactly once, every stored event handled or
        dead-lettered, the gateway SERVING and every worker pulling."""
        await self.gateway_serving()
        await self.workers_pulling()
        stored = await self.stored_ids()
        twice = [i for i, n in Counter(stored).items() if n > 1]
        assert not twice, f"stored more than once: {twice[:10]}"
        missing = set(acknowledged) - set(stored)
        assert not missing, f"acknowledged, not stored: {sorted(missing)[:10]}"

        async def all_done() -> None:
            dead = set(await self.stored_ids(wire.DEAD_LETTER_STREAM))
            left = set(stored) - self.handled() - dead
            assert not left, f"{len(left)} stored events neither handled nor dead-lettered"

        await self.eventually(all_done, "every stored event handled or dead-lettered")


_RETRY_ON = (AssertionError, nats.errors.Error, TimeoutError, grpc.aio.AioRpcError)


@dataclass
class Load:
    """Publishes `count` OrderPlaced events with fixed ids, 10 per PublishBatch, retrying
    each retryable refusal with the same id until every one is acknowledged."""

    stub: gateway_pb2_grpc.EventGatewayAsyncStub
    count: int
    prefix: str = "e"
    acknowledged: dict[str, int] = field(default_factory=dict)
    refusals: Counter[str] = field(default_factory=Counter)
    # The text of the latest refusal, for failure messages.
    last_refusal: str = ""

    @property
    def ids(self) -> list[str]:
        return [f"{self.prefix}-{i}" for i in range(self.count)]

    def unexpected(self) -> dict[str, int]:
        """Refusals a client must not get from a fault (anything but retryable ones)."""
        retryable = {code.name for code in RETRYABLE}
        return {code: n for code, n in self.refusals.items() if code not in retryable}

    async def run(self) -> None:
        pending = self.ids
        while pending:
            batch, pending = pending[:10], pending[10:]
            entries = [request(f"k-{i}", event_id=i) for i in batch]
            try:
                reply = await self.stub.PublishBatch(
                    gateway_pb2.PublishBatchRequest(entries=entries), timeout=5
                )
            except grpc.aio.AioRpcError as error:
                self.refusals[error.code().name] += 1
                self.last_refusal = f"{error.code().name}: {error.details()}"
                pending = batch + pending
                await asyncio.sleep(0.05)  # a client's retry pause, not a wait for a state
                continue
            retry = []
            for event_id, result in zip(batch, reply.results, strict=True):
                if result.HasField("ok"):
                    self.acknowledged[event_id] = result.ok.sequence
                else:
                    self.refusals[CODES[result.error.code].name] += 1
                    self.last_refusal = f"{CODES[result.error.code].name}: {result.error.message}"
                    retry.append(event_id)
            if retry:
                pending = retry + pending
                await asyncio.sleep(0.05)


def order(key: str, padding: int = 0) -> orders_pb2.OrderPlaced:
    return orders_pb2.OrderPlaced(order_id=key, customer_id="c" * padding)
