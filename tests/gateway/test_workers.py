"""`jetgate up`'s worker processes: addresses they get, and a worker that dies on its own."""

from __future__ import annotations

import logging

import pytest
from nats.aio.client import Client

from gateway.workers import WorkerProcesses, client_address
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
        *("--nats-url", "nats://127.0.0.1:4222", "--metrics-listen", "127.0.0.1:9465"),
    ]
    # The next worker gets the next port; with port 0 every worker takes any free port.
    assert workers.command("consumers.demo:shipping", 1)[-1] == "127.0.0.1:9466"
    workers.metrics_listen = "127.0.0.1:0"
    assert workers.command("consumers.demo:shipping", 1)[-1] == "127.0.0.1:0"
    workers.metrics_listen = ""
    assert workers.command("consumers.demo:shipping", 1)[-1] == ""


async def test_a_worker_that_exits_on_its_own_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    workers = WorkerProcesses(
        ["no_such_module:group"], nats_url="nats://127.0.0.1:1", gateway_address="127.0.0.1:1"
    )
    with caplog.at_level(logging.INFO, logger="jetgate.workers"):
        workers.start()
        try:
            await eventually(
                lambda: any("exited unexpectedly" in r.message for r in caplog.records),
                what="the exit logged",
            )
        finally:
            await workers.stop(grace=10)
    [(_, pid)] = workers.pids
    assert f"worker no_such_module:group (pid {pid}) exited unexpectedly with code 2" in caplog.text


async def test_wait_ready_names_the_workers_that_never_pulled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A worker that cannot even load its group exits at once: its pipe ends without "ready".
    workers = WorkerProcesses(
        ["no_such_module:group"], nats_url="nats://127.0.0.1:1", gateway_address="127.0.0.1:1"
    )
    workers.start()
    try:
        assert await workers.wait_ready(30) == ["no_such_module:group"]
    finally:
        await workers.stop(grace=10)
    assert "worker no_such_module:group did not report ready within 30s" in caplog.text


async def test_wait_ready_returns_once_each_worker_pulls(nats_url: str, nc: Client) -> None:
    await nc.jetstream().add_stream(name="ORDERS", subjects=["orders.>"])
    workers = WorkerProcesses(
        ["consumers.demo:billing", "consumers.demo:shipping"],
        nats_url=nats_url,
        gateway_address="127.0.0.1:1",
    )
    workers.start()
    try:
        assert await workers.wait_ready(30) == []
        # Ready means pulling: each group's consumer has pull requests waiting (each expires
        # after 1 s and is renewed, so look until one is seen).
        for group in ("billing", "shipping"):

            async def pulling(group: str = group) -> None:
                info = await nc.jetstream().consumer_info("ORDERS", group)
                assert info.num_waiting >= 1, (group, info.num_waiting)

            await eventually(pulling)
    finally:
        await workers.stop(grace=10)
