"""The consumer-group workers of `jetgate up` (setting `workers`), run as child processes.

Each `MODULE:GROUP` entry becomes one `python -m consumers consume MODULE:GROUP` process,
started with the interpreter that runs the gateway: workers are separate processes in
production too. Each worker:
- gets the NATS settings of `jetgate up` (URLs, credentials, TLS files: `JETGATE_NATS_*`,
  jetgate/nats_options.py `to_env`) in its environment, not on its command line: a URL or
  setting may carry a token or password, and any local user can read command lines (`ps`),
  while a process's environment is readable by its own user only;
- gets `JETGATE_GATEWAY`, the gateway's address, where the demo handlers publish their
  follow-up events, and shares the gateway's stdout and stderr;
- gets the `OTEL_*` variables of `jetgate up` except `OTEL_SERVICE_NAME` (a worker's
  service is its group), and its own /metrics port: the ones after the gateway's
  (`--metrics-listen` N+1, N+2, ...; any free port when the gateway's is 0). When that port
  is taken the worker takes the next free one (`--metrics-port-tries`, as `jetgate consume`
  does by default) and logs which;
- runs in its own session, so a Ctrl-C reaches only `jetgate up`, which stops the workers
  first (SIGTERM: they finish and acknowledge their in-flight events, whose follow-ups
  still need the gateway), then the gateway, then the embedded nats-server;
- gets SIGTERM when `jetgate up` dies, even by kill -9 (`die_with_parent`);
- reports `ready` on a pipe (`JETGATE_READY_FD`) once it pulls events: `wait_ready()` lets
  `jetgate up` print its banner when the pipeline really runs, not before.

Supervision (one task per worker): `jetgate up` never runs on with half a pipeline.
- A worker that cannot start (exits, or does not report ready within `ready_timeout`, on
  its first start) fails `jetgate up` at once: `wait_ready()` raises `WorkerFailed`,
  naming the worker and its exit code (its own error is in the shared output above).
- A worker that dies after it was ready is restarted after a backoff (0.5 s, doubling, at
  most 8 s), logged each time. More than `max_restarts` deaths within `restart_window`
  seconds (it keeps dying, or a restart cannot start) give up: `failed()` returns the
  `WorkerFailed` (a `StartupError`) that `jetgate up` then stops on, with exit code 1.
Process exits are watched with a pidfd in the event loop (no thread per worker; a thread
blocked in waitpid() on hosts without pidfd).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.embedded import die_with_parent
from jetgate import nats_options, processes
from jetgate.errors import StartupError
from jetgate.nats_options import NatsOptions

log = logging.getLogger("jetgate.workers")
READY_TIMEOUT = 60.0  # s a worker has to report ready (generous: busy machines)
MAX_RESTARTS = 5  # deaths within RESTART_WINDOW tolerated before `jetgate up` gives up
RESTART_WINDOW = 60.0  # s
RESTART_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)  # s before the 1st, 2nd, ... restart in a row
METRICS_PORT_TRIES = 100  # a taken worker metrics port moves on to the next free one


class WorkerFailed(StartupError):
    """A worker of `jetgate up` cannot start or keeps dying; the message says which and why."""


@dataclass(slots=True)
class _Slot:
    """One worker: its target and index, and the process currently running it."""

    target: str
    index: int
    proc: subprocess.Popen[bytes] | None = None
    ready_fd: int = -1  # the read end of the current process's readiness pipe
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # its first process was ready
    task: asyncio.Task[None] | None = None


class WorkerProcesses:
    """A supervised worker process per target: `start()` once the gateway serves,
    `wait_ready()`, then `failed()` while it runs, `stop()` before the gateway stops."""

    def __init__(
        self,
        targets: Sequence[str],
        *,
        nats_url: str = "",
        nats: NatsOptions | None = None,
        gateway_address: str,
        metrics_listen: str = "",
        ready_timeout: float = READY_TIMEOUT,
        max_restarts: int = MAX_RESTARTS,
        restart_window: float = RESTART_WINDOW,
        backoff: Sequence[float] = RESTART_BACKOFF,
    ) -> None:
        self.targets = tuple(targets)
        # `nats` wins; a bare `nats_url` is the same without credentials or TLS.
        self.nats = nats if nats is not None else nats_options.options({"nats_url": nats_url})
        self.gateway_address = client_address(gateway_address)
        self.metrics_listen = metrics_listen
        self.ready_timeout = ready_timeout
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.backoff = tuple(backoff)
        self._slots = [_Slot(target, index) for index, target in enumerate(self.targets)]
        self._stopping = asyncio.Event()
        self._failure: asyncio.Future[WorkerFailed] | None = None

    @property
    def pids(self) -> list[tuple[str, int]]:
        """(target, pid) of every running worker, in start order."""
        return [(s.target, s.proc.pid) for s in self._slots if s.proc is not None]

    def command(self, target: str, index: int = 0) -> list[str]:
        """The command line of worker number `index` (of `target`)."""
        metrics = ""
        if self.metrics_listen:
            host, _, port = self.metrics_listen.rpartition(":")
            metrics = f"{host}:{int(port) + 1 + index if int(port) else 0}"
        return [
            *(sys.executable, "-m", "consumers", "consume", target),
            *("--metrics-listen", metrics, "--metrics-port-tries", str(METRICS_PORT_TRIES)),
        ]

    def start(self) -> None:
        """Spawn every worker and supervise it (they connect and subscribe on their own).

        Call it from the event loop in the main thread: the parent-death signal follows the
        spawning thread (restarts are spawned from the loop as well).
        """
        self._failure = asyncio.get_running_loop().create_future()
        for slot in self._slots:
            self._spawn(slot)
            slot.task = asyncio.create_task(self._supervise(slot))

    async def wait_ready(self) -> None:
        """Until every worker reported ready; raises WorkerFailed when one cannot start."""
        failed = asyncio.ensure_future(self.failed())
        all_ready = asyncio.ensure_future(self._all_ready())
        try:
            await asyncio.wait([failed, all_ready], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (failed, all_ready):
                waiter.cancel()
        if failed.done() and not failed.cancelled():
            raise failed.result()

    async def _all_ready(self) -> None:
        for slot in self._slots:
            await slot.ready.wait()

    async def failed(self) -> WorkerFailed:
        """Wait until a worker cannot start or keeps dying; what `jetgate up` stops on."""
        assert self._failure is not None, "start() first"
        return await asyncio.shield(self._failure)

    async def stop(self, grace: float) -> None:
        """SIGTERM every worker and wait up to `grace` s for them to drain; SIGKILL the rest.

        A killed worker's unacknowledged events are redelivered to the group after ack_wait.
        """
        self._stopping.set()
        for slot in self._slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.terminate()
        tasks = [s.task for s in self._slots if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for slot in self._slots:
            if slot.task is None:
                continue
            if not slot.task.done() and slot.proc is not None:
                log.warning(
                    "worker %s (pid %d) still draining after %gs; killed",
                    *(slot.target, slot.proc.pid, grace),
                )
                slot.proc.kill()
            await slot.task

    def _spawn(self, slot: _Slot) -> None:
        # Our NATS settings replace any inherited ones (e.g. `up` with an embedded server).
        env = {
            k: v
            for k, v in os.environ.items()
            if k != "OTEL_SERVICE_NAME" and not k.startswith("JETGATE_NATS_")
        }
        env.update(nats_options.to_env(self.nats))
        env[processes.GATEWAY_ADDRESS] = self.gateway_address
        ready_fd, report_fd = os.pipe()
        try:
            # subprocess, not the event loop's: uvloop forks, which gRPC's fork handlers
            # log about once its threads run; subprocess spawns with vfork.
            slot.proc = subprocess.Popen(
                [*die_with_parent(), *self.command(slot.target, slot.index)],
                env={**env, processes.READY_FD: str(report_fd)},
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=(report_fd,),
            )
        except BaseException:
            os.close(ready_fd)
            raise
        finally:
            os.close(report_fd)  # the worker holds it now
        slot.ready_fd = ready_fd
        log.info("worker %s started (pid %d)", slot.target, slot.proc.pid)

    async def _supervise(self, slot: _Slot) -> None:
        deaths: list[float] = []
        while True:
            proc = slot.proc
            assert proc is not None
            late = await self._until_ready(slot)  # None: ready
            ready = late is None
            if ready:
                if slot.ready.is_set():  # a restart: say it came back
                    log.info("worker %s (pid %d) ready again", slot.target, proc.pid)
                slot.ready.set()
            code = await _exit_code(proc)
            if self._stopping.is_set():
                log.info("worker %s (pid %d) stopped with code %d", slot.target, proc.pid, code)
                return
            why = f"{late} ({_why(code)})" if late else _why(code)
            if not ready:
                why += " before it was ready"
            if not slot.ready.is_set():  # its first start: it cannot start
                self._fail(f"worker {slot.target} (pid {proc.pid}) {why}")
                return
            log.error("worker %s (pid %d) %s", slot.target, proc.pid, why)
            now = time.monotonic()
            deaths = [t for t in deaths if now - t < self.restart_window] + [now]
            if len(deaths) > self.max_restarts:
                self._fail(
                    f"worker {slot.target} died {len(deaths)} times within "
                    f"{self.restart_window:g}s (last: {_why(code)}); giving up"
                )
                return
            delay = self.backoff[min(len(deaths), len(self.backoff)) - 1]
            log.warning(
                "worker %s: restart %d of at most %d within %gs, in %gs",
                *(slot.target, len(deaths), self.max_restarts, self.restart_window, delay),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return
            self._spawn(slot)

    async def _until_ready(self, slot: _Slot) -> str | None:
        """None once the current process reports ready; else why not: '' when it exited
        first, or that it was not ready within `ready_timeout` s (it gets SIGTERM then).
        Closes its readiness pipe."""
        fd, slot.ready_fd = slot.ready_fd, -1
        try:
            async with asyncio.timeout(self.ready_timeout):
                await _readable(fd)
                return None if os.read(fd, 64) == processes.READY else ""
        except TimeoutError:
            assert slot.proc is not None
            slot.proc.terminate()
            return f"did not report ready within {self.ready_timeout:g}s"
        finally:
            os.close(fd)

    def _fail(self, reason: str) -> None:
        log.error("%s", reason)
        if self._failure is not None and not self._failure.done():
            self._failure.set_result(WorkerFailed(reason))


def _why(code: int) -> str:
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


async def _readable(fd: int) -> bool:
    """Wait until `fd` is readable (data or end of file), in the event loop."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[bool] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(True)

    loop.add_reader(fd, readable)
    try:
        return await ready
    finally:
        loop.remove_reader(fd)


async def _exit_code(proc: subprocess.Popen[bytes]) -> int:
    """Wait for `proc` to exit (a pidfd in the event loop where there is one) and reap it."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux >= 5.3, or already reaped
        return await asyncio.to_thread(proc.wait)
    try:
        await _readable(pidfd)  # readable once the process has exited
    finally:
        os.close(pidfd)
    return proc.wait()


def client_address(listen_address: str) -> str:
    """Where a local client reaches a server listening on `listen_address` (HOST:PORT)."""
    host, _, port = listen_address.rpartition(":")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "[::]":
        host = "[::1]"
    return f"{host}:{port}"
