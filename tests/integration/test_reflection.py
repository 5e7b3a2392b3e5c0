"""Reflection v1alpha (what older tools speak) resolves the same symbols as v1."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.server import Gateway


async def _ask(gateway: Gateway, request: reflection_pb2.ServerReflectionRequest) -> Any:
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        async for response in stub.ServerReflectionInfo(iter([request])):
            return response
    raise AssertionError("no reflection response")


async def test_v1alpha_resolves_a_method(gateway: Gateway) -> None:
    request = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="jetgate.v1.EventGateway.PublishBatch"
    )
    response = await _ask(gateway, request)
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw).name
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    assert files[0] == "jetgate/v1/gateway.proto"
    assert {"jetgate/v1/event.proto", "google/rpc/status.proto"} <= set(files)


async def test_v1alpha_unknown_symbol_is_not_found(gateway: Gateway) -> None:
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Thing")
    response = await _ask(gateway, request)
    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
