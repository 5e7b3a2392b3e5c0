"""A worker with tracing off still passes an event's trace context on to its follow-ups.

The demo pipeline's billing worker runs as its own process (`python -m consumers consume
consumers.demo:billing`, no `OTEL_*` settings: tracing off) behind an in-process gateway
with tracing off too: the OrderPaid its handler publishes carries the trace id the client
sent with the OrderPlaced.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from gateway.config import load_config
from gateway.server import Gateway
from jetgate.v1 import gateway_pb2_grpc
from tests.integration.conftest import request, serving
from tests.support.eventually import eventually

REPO = Path(__file__).resolve().parents[2]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
async def gateway(nats_url: str) -> AsyncIterator[Gateway]:
    config = load_config(REPO / "jetgate.toml", env={})
    config = dataclasses.replace(config, nats_url=nats_url, listen="127.0.0.1:0")
    async with serving(config) as server:
        yield server


@pytest.fixture
async def billing(
    nats_url: str, gateway: Gateway, tmp_path: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JETGATE_", "OTEL_"))}
    env["JETGATE_GATEWAY"] = gateway.address
    log = tmp_path / "billing.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-W", "error", "-m", "consumers", "consume"),
            "consumers.demo:billing",
            *("--nats-url", nats_url, "--metrics-listen", ""),
            cwd=REPO,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
        )
    finally:
        os.close(fd)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_follow_up_carries_the_trace_id_of_its_cause_with_tracing_off(
    nc: Client, gateway: Gateway, billing: asyncio.subprocess.Process
) -> None:
    js = nc.jetstream()
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = gateway_pb2_grpc.EventGatewayStub(channel)
        await stub.Publish(request("o-trace"), metadata=(("traceparent", TRACEPARENT),))

    placed = await js.get_last_msg("ORDERS", "orders.OrderPlaced.o-trace")
    assert (placed.headers or {}).get("traceparent", "").split("-")[1] == TRACE_ID

    async def paid() -> dict[str, str]:
        try:
            message = await js.get_last_msg("ORDERS", "orders.OrderPaid.o-trace")
        except NotFoundError:
            raise AssertionError("no OrderPaid yet") from None
        return dict(message.headers or {})

    headers = await eventually(paid, what="billing publishes the OrderPaid")
    assert "traceparent" in headers, headers
    assert headers["traceparent"].split("-")[1] == TRACE_ID
    assert billing.returncode is None
