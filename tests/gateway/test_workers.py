"""`jetgate up`'s worker processes: addresses they get, a worker that cannot start."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client

from gateway.workers import WorkerFailed, WorkerProcesses, client_address
from tests.support.eventually import eventually


@pytest.mark.parametrize(
    ("listen", "reachable"),
    [
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("0.0.0.0:50051", "127.0.0.1:50051"),
        ("[::]:50051", "[::1]:50051"),
        ("[::1]:7000", "[::1]:7000"),
        ("gw.example:443", "gw.example:443"),
    ],
)
def test_client_address(listen: str, reachable: str) -> None:
    assert client_address(listen) == reachable


def test_worker_command_runs_the_consumers_cli() -> None:
    workers = WorkerProcesses(
        ["consumers.demo:billing", "consumers.demo:shipping"],
        nats_url="nats://127.0.0.1:4222",
        gateway_address=":1",
        metrics_listen="127.0.0.1:9464",
    )
    assert workers.command("consumers.demo:billing")[1:] == [
        *("-m", "consumers", "consume", "consumers.demo:billing"),
        *("--metrics-listen", "127.0.0.1:9465", "--metrics-port-tries", "100"),
    ]
    assert not any("nats://" in arg for arg in workers.command("consumers.demo:billing"))
    # The next worker gets the next port; with port 0 every worker takes any free port.
    assert workers.command("consumers.demo:shipping", 1)[-3] == "127.0.0.1:9466"
    workers.metrics_listen = "127.0.0.1:0"
    assert workers.command("consumers.demo:shipping", 1)[-3] == "127.0.0.1:0"
    workers.metrics_listen = ""
    assert workers.command("consumers.demo:shipping", 1)[-3] == ""


async def test_a_worker_that_cannot_start_fails_wait_ready() -> None:
    # A worker that cannot even load its group exits at once: its pipe ends without "ready".
    workers = WorkerProcesses(
        ["no_such_module:group"], nats_url="nats://127.0.0.1:1", gateway_address="127.0.0.1:1"
    )
    workers.start()
    try:
        with pytest.raises(WorkerFailed) as failed:
            await workers.wait_ready()
    finally:
        await workers.stop(grace=10)
    [(_, pid)] = workers.pids
    assert str(failed.value) == (
        f"worker no_such_module:group (pid {pid}) exited with code 2 before it was ready"
    )


async def test_a_worker_not_ready_in_time_fails_wait_ready() -> None:
    # A "NATS server" that accepts connections and never says a word: the worker neither
    # gets ready nor fails (an unreachable port would make it exit at once, a different path).
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    workers = WorkerProcesses(
        ["consumers.demo:billing"],
        nats_url=f"nats://127.0.0.1:{port}",
        gateway_address="127.0.0.1:1",
        ready_timeout=1.0,
    )
    workers.start()
    try:
        with pytest.raises(WorkerFailed, match=r"did not report ready within 1s \(exited"):
            await workers.wait_ready()
    finally:
        await workers.stop(grace=10)
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_wait_ready_returns_once_each_worker_pulls(nats_url: str, nc: Client) -> None:
    await nc.jetstream().add_stream(name="ORDERS", subjects=["orders.>"])
    workers = WorkerProcesses(
        ["consumers.demo:billing", "consumers.demo:shipping"],
        nats_url=nats_url,
        gateway_address="127.0.0.1:1",
    )
    workers.start()
    try:
        await workers.wait_ready()
        # Ready means pulling: each group's consumer has pull requests waiting (each expires
        # after 1 s and is renewed, so look a few times).
        for group in ("billing", "shipping"):

            async def pulling(group: str = group) -> None:
                info = await nc.jetstream().consumer_info("ORDERS", group)
                assert info.num_waiting >= 1, (group, info.num_waiting)

            await eventually(pulling, what=f"{group} pulling")
    finally:
        await workers.stop(grace=10)
