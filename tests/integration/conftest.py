"""A real gateway (grpc.aio, in-process) in front of the per-test nats-server."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from gateway.config import GatewayConfig, load_config
from gateway.server import Gateway
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def gateway_config(nats_url: str) -> GatewayConfig:
    """The demo config (jetgate.toml) on ephemeral ports."""
    config = load_config(REPO / "jetgate.toml", env={})
    return dataclasses.replace(config, nats_url=nats_url, listen="127.0.0.1:0", publish_timeout=3.0)


@contextlib.asynccontextmanager
async def serving(config: GatewayConfig, **providers: Any) -> AsyncIterator[Gateway]:
    """An in-process gateway for `config` (and tracer/meter `providers`), started; stopped
    on exit."""
    server = Gateway(config, **providers)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=1.0)


@pytest.fixture
async def gateway(gateway_config: GatewayConfig) -> AsyncIterator[Gateway]:
    async with serving(gateway_config) as server:
        yield server


@pytest.fixture
async def stub(gateway: Gateway) -> AsyncIterator[gateway_pb2_grpc.EventGatewayStub]:
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        yield gateway_pb2_grpc.EventGatewayStub(channel)


def order_placed(order_id: str = "o-42", customer: str = "c-7") -> orders_pb2.OrderPlaced:
    return orders_pb2.OrderPlaced(
        order_id=order_id,
        customer_id=customer,
        items=[
            orders_pb2.LineItem(
                sku="sku-1",
                quantity=2,
                unit_price=orders_pb2.Money(currency_code="EUR", units=9, nanos=990_000_000),
            )
        ],
        total=orders_pb2.Money(currency_code="EUR", units=19, nanos=980_000_000),
    )


def request(
    key: str = "o-42",
    *,
    message: object | None = None,
    event_id: str = "",
    headers: dict[str, str] | None = None,
    precondition: event_pb2.Precondition | None = None,
) -> gateway_pb2.PublishRequest:
    payload = any_pb2.Any()
    payload.Pack(message if message is not None else order_placed(key))  # type: ignore[arg-type]
    return gateway_pb2.PublishRequest(
        event=event_pb2.Event(id=event_id, key=key, payload=payload, headers=headers or {}),
        precondition=precondition,
    )


def rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc.Status carried in the grpc-status-details-bin trailer."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            assert isinstance(value, bytes)
            return status_pb2.Status.FromString(value)
    raise AssertionError(f"no status details in {error!r}")


def field_violations(status: status_pb2.Status) -> dict[str, str]:
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            return {v.field: v.description for v in bad.field_violations}
    raise AssertionError(f"no BadRequest detail in {status}")


def detail(
    status: status_pb2.Status, kind: type[event_pb2.SequenceConflict]
) -> event_pb2.SequenceConflict:
    for item in status.details:
        found = kind()
        if item.Unpack(found):
            return found
    raise AssertionError(f"no {kind.__name__} in {status}")
