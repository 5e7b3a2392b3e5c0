"""Shared fixtures: a real nats-server per test (ephemeral port, temp dir) and a client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from gateway.cluster import NatsCluster
from gateway.embedded import NatsServer


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A started nats-server with JetStream, file storage under tmp_path; stopped after."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A started 3-node JetStream cluster on loopback; stopped after."""
    nodes = NatsCluster(tmp_path / "nats", size=3)
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    """A nats-py client connected to `nats_server`; closed after the test."""
    client = await nats.connect(nats_url)
    try:
        yield client
    finally:
        await client.close()
