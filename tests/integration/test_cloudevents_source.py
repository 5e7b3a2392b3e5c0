"""CloudEvents `source` through the gateway (issue 15): a URI-reference, or INVALID_ARGUMENT
with nothing stored (SDKs refuse an event whose source does not parse as a URI)."""

from __future__ import annotations

import grpc
import pytest
from nats.aio.client import Client

from jetgate.v1 import gateway_pb2_grpc
from tests.integration.conftest import field_violations, request, rich_status

Stub = gateway_pb2_grpc.EventGatewayStub


@pytest.mark.parametrize("source", ["check out", "1a:b", "/a%zz", "x#a#b"])
async def test_a_source_that_is_no_uri_reference_is_refused(
    source: str, stub: Stub, nc: Client
) -> None:
    req = request("o-1")
    req.event.source = source
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Publish(req)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "URI-reference" in field_violations(rich_status(caught.value))["event.source"]
    info = await nc.jetstream().stream_info("ORDERS")
    assert info.state.messages == 0


async def test_a_uri_source_is_stored_as_it_is(stub: Stub, nc: Client) -> None:
    req = request("o-1")
    req.event.source = "https://shop.example/checkout?region=eu"
    reply = await stub.Publish(req)
    stored = await nc.jetstream().get_msg("ORDERS", reply.sequence)
    assert (stored.headers or {})["ce-source"] == "https://shop.example/checkout?region=eu"


async def test_an_iri_source_is_stored_as_its_uri(stub: Stub, nc: Client) -> None:
    req = request("o-1")
    req.event.source = "/läden/köln"
    reply = await stub.Publish(req)
    stored = await nc.jetstream().get_msg("ORDERS", reply.sequence)
    assert (stored.headers or {})["ce-source"] == "/l%C3%A4den/k%C3%B6ln"
