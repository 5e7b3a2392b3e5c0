"""The consumer-group workers of `jetgate up` (setting `workers`), run as child processes.

Each `MODULE:GROUP` entry becomes one `python -m consumers consume MODULE:GROUP` process,
started with the interpreter that runs the gateway: workers are separate processes in
production too. Each worker:
- gets the NATS URL in `JETGATE_NATS_URL`, not on its command line: a URL may carry a
  token or password, and any local user can read command lines (`ps`);
- gets `JETGATE_GATEWAY`, the gateway's address, where the demo handlers publish their
  follow-up events, and shares the gateway's stdout and stderr;
- gets the `OTEL_*` variables of `jetgate up` except `OTEL_SERVICE_NAME` (a worker's
  service is its group), and its own /metrics port: the ones after the gateway's
  (`--metrics-listen` N+1, N+2, ...; any free port when the gateway's is 0);
- runs in its own session, so a Ctrl-C reaches only `jetgate up`, which stops the workers
  first (SIGTERM: they finish and acknowledge their in-flight events, whose follow-ups
  still need the gateway), then the gateway, then the embedded nats-server;
- gets SIGTERM when `jetgate up` dies, even by kill -9 (`die_with_parent`);
- reports `ready` on a pipe (`JETGATE_READY_FD`) once it pulls events: `wait_ready()` lets
  `jetgate up` print its banner when the pipeline really runs, not before.

A worker that exits on its own is logged, not restarted: the group's other workers take
its events, or they wait in the stream for the next worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.embedded import die_with_parent
from jetgate import processes

log = logging.getLogger("jetgate.workers")
READY_TIMEOUT = 15.0  # s `jetgate up` waits for its workers before the banner


@dataclass(slots=True)
class _Worker:
    target: str
    proc: subprocess.Popen[bytes]
    watch: asyncio.Task[None]
    ready_fd: int  # the read end of the worker's readiness pipe


class WorkerProcesses:
    """A worker process per target: `start()` once the gateway serves, `stop()` before it stops."""

    def __init__(
        self,
        targets: Sequence[str],
        *,
        nats_url: str,
        gateway_address: str,
        metrics_listen: str = "",
    ) -> None:
        self.targets = tuple(targets)
        self.nats_url = nats_url
        self.gateway_address = client_address(gateway_address)
        self.metrics_listen = metrics_listen
        self._workers: list[_Worker] = []
        self._stopping = False

    @property
    def pids(self) -> list[tuple[str, int]]:
        """(target, pid) of every started worker, in start order."""
        return [(w.target, w.proc.pid) for w in self._workers]

    def command(self, target: str, index: int = 0) -> list[str]:
        """The command line of worker number `index` (of `target`)."""
        metrics = ""
        if self.metrics_listen:
            host, _, port = self.metrics_listen.rpartition(":")
            metrics = f"{host}:{int(port) + 1 + index if int(port) else 0}"
        return [
            *(sys.executable, "-m", "consumers", "consume", target),
            *("--metrics-listen", metrics),
        ]

    def start(self) -> None:
        """Spawn every worker (they connect and subscribe on their own, in the background).

        Call it from the event loop in the main thread: the parent-death signal follows the
        spawning thread.
        """
        env = {k: v for k, v in os.environ.items() if k != "OTEL_SERVICE_NAME"}
        env[processes.GATEWAY_ADDRESS] = self.gateway_address
        env[processes.NATS_URL] = self.nats_url
        for index, target in enumerate(self.targets):
            ready_fd, report_fd = os.pipe()
            try:
                # subprocess, not the event loop's: uvloop forks, which gRPC's fork handlers
                # log about once its threads run; subprocess spawns with vfork.
                proc = subprocess.Popen(
                    [*die_with_parent(), *self.command(target, index)],
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
            log.info("worker %s started (pid %d)", target, proc.pid)
            watch = asyncio.create_task(self._watch(target, proc))
            self._workers.append(_Worker(target, proc, watch, ready_fd))

    async def wait_ready(self, within: float) -> list[str]:
        """Wait up to `within` s for every worker to report ready; the targets that did not
        (exited, or still starting: logged, they may yet come up)."""
        waiting = [asyncio.to_thread(_read_ready, w.ready_fd, within) for w in self._workers]
        late = [
            w.target
            for w, ready in zip(self._workers, await asyncio.gather(*waiting), strict=True)
            if not ready
        ]
        for target in late:
            log.warning("worker %s did not report ready within %gs", target, within)
        return late

    async def stop(self, grace: float) -> None:
        """SIGTERM every worker and wait up to `grace` s for them to drain; SIGKILL the rest.

        A killed worker's unacknowledged events are redelivered to the group after ack_wait.
        """
        self._stopping = True
        for worker in self._workers:
            if not worker.watch.done():
                worker.proc.terminate()
        watches = [w.watch for w in self._workers]
        if watches:
            await asyncio.wait(watches, timeout=grace)
        for worker in self._workers:
            if not worker.watch.done():
                log.warning(
                    "worker %s (pid %d) still draining after %gs; killed",
                    *(worker.target, worker.proc.pid, grace),
                )
                worker.proc.kill()
            await worker.watch

    async def _watch(self, target: str, proc: subprocess.Popen[bytes]) -> None:
        # A thread per worker blocks in waitpid(): portable, and there are only a few.
        code = await asyncio.to_thread(proc.wait)
        if self._stopping:
            log.info("worker %s (pid %d) stopped with code %d", target, proc.pid, code)
        else:
            log.error(
                "worker %s (pid %d) exited unexpectedly with code %d; not restarted",
                *(target, proc.pid, code),
            )


def _read_ready(fd: int, timeout: float) -> bool:
    """Whether `ready` arrives on pipe `fd` within `timeout` s; closes `fd` either way."""
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable) and os.read(fd, 64) == processes.READY
    finally:
        os.close(fd)


def client_address(listen_address: str) -> str:
    """Where a local client reaches a server listening on `listen_address` (HOST:PORT)."""
    host, _, port = listen_address.rpartition(":")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "[::]":
        host = "[::1]"
    return f"{host}:{port}"
