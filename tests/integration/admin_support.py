"""Helpers of the Admin service tests: a stub on a gateway, and the error details."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from google.rpc import error_details_pb2

from gateway.server import Gateway
from jetgate.v1 import admin_pb2_grpc
from tests.integration.conftest import field_violations, rich_status


@contextlib.asynccontextmanager
async def admin_stub(gateway: Gateway) -> AsyncIterator[admin_pb2_grpc.AdminAsyncStub]:
    """An Admin stub on a plaintext channel to `gateway`."""
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        yield admin_pb2_grpc.AdminStub(channel)


@pytest.fixture
async def admin(gateway: Gateway) -> AsyncIterator[admin_pb2_grpc.AdminAsyncStub]:
    async with admin_stub(gateway) as stub:
        yield stub


def resource(error: grpc.aio.AioRpcError) -> error_details_pb2.ResourceInfo:
    """The ResourceInfo detail of a NOT_FOUND."""
    for detail in rich_status(error).details:
        found = error_details_pb2.ResourceInfo()
        if detail.Unpack(found):
            return found
    raise AssertionError(f"no ResourceInfo in {error!r}")


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest field violations of an INVALID_ARGUMENT."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    return field_violations(rich_status(error))
