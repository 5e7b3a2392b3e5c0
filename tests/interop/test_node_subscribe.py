"""The Node client (tests/interop/node/client.js: @grpc/grpc-js and @grpc/proto-loader
reading proto/) against a real gateway and nats-server: the scenarios of client_scenarios."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.aio.client import Client as Nats

from gateway.server import Gateway
from tests.interop import client_scenarios as scenarios
from tests.interop.clients import node_client

pytestmark = pytest.mark.interop


async def test_node_client_publishes_and_a_retry_is_a_duplicate(
    gateway: Gateway, nc: Nats, tmp_path: Path
) -> None:
    await scenarios.publishes(node_client(gateway.address), nc, tmp_path)


async def test_node_client_decodes_bad_request_field_violations(
    gateway: Gateway, tmp_path: Path
) -> None:
    await scenarios.decodes_bad_request(node_client(gateway.address), gateway, tmp_path)


async def test_node_client_decodes_a_sequence_conflict_and_appends_with_its_sequence(
    gateway: Gateway, tmp_path: Path
) -> None:
    await scenarios.decodes_sequence_conflict(node_client(gateway.address), tmp_path)


async def test_node_client_subscribes_acks_naks_and_rejects(
    group_gateway: Gateway, nc: Nats, tmp_path: Path
) -> None:
    client = node_client(group_gateway.address)
    # The NAK names no delay: the group's backoff applies.
    await scenarios.subscribes_acks_naks_and_rejects(client, nc, tmp_path, nak_delay=0)


async def test_node_client_reads_a_keys_history(gateway: Gateway, tmp_path: Path) -> None:
    await scenarios.reads_a_keys_history(node_client(gateway.address), tmp_path, per_response=0)
