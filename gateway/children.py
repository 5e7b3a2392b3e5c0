"""Supervised child processes: what `jetgate up`'s workers (gateway/workers.py) and the
gateway processes of `jetgate serve --processes N` (gateway/processes.py) share.

A subclass says what a child runs (`command`) and with which environment (`environment`);
this module starts, watches, restarts and stops them. Every child:
- runs in its own session, so a Ctrl-C reaches only the parent, which stops the children
  in its own order (SIGTERM: they drain);
- gets SIGTERM when the parent dies, even by kill -9 (`die_with_parent`);
- reports `ready` on a pipe (`JETGATE_READY_FD`): `wait_ready()` returns once every child
  does, so the parent prints its banner when everything really runs, not before.

Supervision (one task per child): the parent never runs on with a child missing for good.
- A child that cannot start (exits, or does not report ready within `ready_timeout`, on
  its first start) fails at once: `wait_ready()` raises the subclass's `failure` (a
  `StartupError`), naming the child and its exit code (its own error is in the shared
  output above).
- A child that dies after it was ready is restarted after a backoff (0.5 s, doubling, at
  most 8 s), logged each time. More than `max_restarts` deaths within `restart_window`
  seconds (it keeps dying, or a restart cannot start) give up: `failed()` returns the
  failure the parent then stops on, with exit code 1.
Process exits are watched with a pidfd in the event loop (no thread per child; a thread
blocked in waitpid() on hosts without pidfd).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.embedded import die_with_parent
from jetgate import processes
from jetgate.errors import StartupError

READY_TIMEOUT = 60.0  # s a child has to report ready (generous: busy machines)
MAX_RESTARTS = 5  # deaths within RESTART_WINDOW tolerated before the parent gives up
RESTART_WINDOW = 60.0  # s
RESTART_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)  # s before the 1st, 2nd, ... restart in a row


class ChildFailed(StartupError):
    """A child process cannot start or keeps dying; the message says which and why."""


@dataclass(slots=True)
class _Slot:
    """One child: its name and index, and the process currently running it."""

    target: str
    index: int
    proc: subprocess.Popen[bytes] | None = None
    ready_fd: int = -1  # the read end of the current process's readiness pipe
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # its first process was ready
    task: asyncio.Task[None] | None = None


class ChildProcesses:
    """A supervised process per target: `start()`, `wait_ready()`, then `failed()` while
    they run, `stop()` at the end. Subclasses define `command` and `environment`."""

    kind = "child"  # how log lines and failures name one ("worker X (pid N) ...")
    failure: type[ChildFailed] = ChildFailed
    log = logging.getLogger("jetgate.children")

    def __init__(
        self,
        targets: Sequence[str],
        *,
        ready_timeout: float = READY_TIMEOUT,
        max_restarts: int = MAX_RESTARTS,
        restart_window: float = RESTART_WINDOW,
        backoff: Sequence[float] = RESTART_BACKOFF,
    ) -> None:
        self.targets = tuple(targets)
        self.ready_timeout = ready_timeout
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.backoff = tuple(backoff)
        self._slots = [_Slot(target, index) for index, target in enumerate(self.targets)]
        self._stopping = asyncio.Event()
        self._failure: asyncio.Future[ChildFailed] | None = None

    def command(self, target: str, index: int = 0) -> list[str]:
        """The command line of child number `index` (of `target`)."""
        raise NotImplementedError

    def environment(self, target: str, index: int) -> dict[str, str]:
        """The environment of child number `index`: the parent's unless overridden."""
        return dict(os.environ)

    @property
    def pids(self) -> list[tuple[str, int]]:
        """(target, pid) of every running child, in start order."""
        return [(s.target, s.proc.pid) for s in self._slots if s.proc is not None]

    def start(self) -> None:
        """Spawn every child and supervise it.

        Call it from the event loop in the main thread: the parent-death signal follows the
        spawning thread (restarts are spawned from the loop as well).
        """
        self._failure = asyncio.get_running_loop().create_future()
        for slot in self._slots:
            self._spawn(slot)
            slot.task = asyncio.create_task(self._supervise(slot))

    async def wait_ready(self) -> None:
        """Until every child reported ready; raises `failure` when one cannot start."""
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

    async def failed(self) -> ChildFailed:
        """Wait until a child cannot start or keeps dying; what the parent stops on."""
        assert self._failure is not None, "start() first"
        return await asyncio.shield(self._failure)

    def signal(self, sig: int) -> None:
        """Send `sig` to every running child (e.g. SIGHUP: reload)."""
        for slot in self._slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(sig)

    async def stop(self, grace: float) -> None:
        """SIGTERM every child and wait up to `grace` s for them to drain; SIGKILL the rest."""
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
                self.log.warning(
                    "%s %s (pid %d) still draining after %gs; killed",
                    *(self.kind, slot.target, slot.proc.pid, grace),
                )
                slot.proc.kill()
            await slot.task

    def _spawn(self, slot: _Slot) -> None:
        env = self.environment(slot.target, slot.index)
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
            os.close(report_fd)  # the child holds it now
        slot.ready_fd = ready_fd
        self.log.info("%s %s started (pid %d)", self.kind, slot.target, slot.proc.pid)

    async def _supervise(self, slot: _Slot) -> None:
        deaths: list[float] = []
        name = f"{self.kind} {slot.target}"
        while True:
            proc = slot.proc
            assert proc is not None
            late = await self._until_ready(slot)  # None: ready
            ready = late is None
            if ready:
                if slot.ready.is_set():  # a restart: say it came back
                    self.log.info("%s (pid %d) ready again", name, proc.pid)
                slot.ready.set()
            code = await _exit_code(proc)
            if self._stopping.is_set():
                self.log.info("%s (pid %d) stopped with code %d", name, proc.pid, code)
                return
            why = f"{late} ({_why(code)})" if late else _why(code)
            if not ready:
                why += " before it was ready"
            if not slot.ready.is_set():  # its first start: it cannot start
                self._fail(f"{name} (pid {proc.pid}) {why}")
                return
            self.log.error("%s (pid %d) %s", name, proc.pid, why)
            now = time.monotonic()
            deaths = [t for t in deaths if now - t < self.restart_window] + [now]
            if len(deaths) > self.max_restarts:
                self._fail(
                    f"{name} died {len(deaths)} times within "
                    f"{self.restart_window:g}s (last: {_why(code)}); giving up"
                )
                return
            delay = self.backoff[min(len(deaths), len(self.backoff)) - 1]
            self.log.warning(
                "%s: restart %d of at most %d within %gs, in %gs",
                *(name, len(deaths), self.max_restarts, self.restart_window, delay),
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
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
        self.log.error("%s", reason)
        if self._failure is not None and not self._failure.done():
            self._failure.set_result(self.failure(reason))


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
