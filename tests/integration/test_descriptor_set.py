"""A type the gateway knows only from a FileDescriptorSet (a service in another language)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2
from nats.aio.client import Client

from gateway.config import GatewayConfig, RouteConfig, StreamConfig
from jetgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc
from tests.gateway.test_registry import BILLING_PROTO, protoc
from tests.integration.conftest import field_violations, rich_status, serving


async def test_publish_a_type_from_a_descriptor_set(
    tmp_path: Path, gateway_config: GatewayConfig, nc: Client
) -> None:
    descriptor_set = protoc(tmp_path, {"acme/billing/v1/billing.proto": BILLING_PROTO})
    config = dataclasses.replace(
        gateway_config,
        descriptor_sets=(str(descriptor_set),),
        streams=(
            *gateway_config.streams,
            StreamConfig(name="BILLING", subjects=("billing.>",), description="invoices"),
        ),
        routes=(
            *gateway_config.routes,
            RouteConfig(match="acme.billing.v1.*", stream="BILLING", subject_prefix="billing"),
        ),
    )
    async with serving(config) as gateway:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.EventGatewayStub(channel)
            # InvoiceIssued{invoice_id: "inv-1", amount_cents: 1250}, encoded by hand: this
            # process has no generated module for it.
            value = b"\x0a\x05inv-1\x10\xe2\x09"
            payload = any_pb2.Any(
                type_url="type.googleapis.com/acme.billing.v1.InvoiceIssued", value=value
            )
            event = event_pb2.Event(key="inv-1", payload=payload)
            reply = await stub.Publish(gateway_pb2.PublishRequest(event=event))
            assert (reply.stream, reply.subject) == ("BILLING", "billing.InvoiceIssued.inv-1")

            event.payload.value = b"\x10\xff"  # truncated varint: not an InvoiceIssued
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Publish(gateway_pb2.PublishRequest(event=event))
            assert "event.payload.value" in field_violations(rich_status(caught.value))
        stored = await nc.jetstream().get_last_msg("BILLING", reply.subject)
        assert stored.data == value
        assert (stored.headers or {})["ce-type"] == "acme.billing.v1.InvoiceIssued"
        info = await nc.jetstream().stream_info("BILLING")
        assert (
            "acme.billing.v1.InvoiceIssued" in (info.config.metadata or {})["jetgate.event_types"]
        )
