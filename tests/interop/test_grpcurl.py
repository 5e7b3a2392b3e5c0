"""Interop with grpcurl: reflection alone (no .proto files) is enough to list, publish
with a JSON Any payload, read rich error details, and check health."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from nats.aio.client import Client

from gateway.config import GatewayConfig, RouteConfig, StreamConfig
from gateway.server import Gateway
from jetgate.examples.orders.v1 import orders_pb2
from tests.gateway.test_registry import BILLING_PROTO, protoc
from tests.integration.conftest import serving
from tests.interop.conftest import peer, run_peer

pytestmark = pytest.mark.interop

ORDER = {
    "event": {
        "key": "o-42",
        "headers": {"tenant": "acme"},
        "payload": {
            "@type": "type.googleapis.com/jetgate.examples.orders.v1.OrderPlaced",
            "orderId": "o-42",
            "customerId": "c-7",
            "total": {"currencyCode": "EUR", "units": "19", "nanos": 980000000},
        },
    }
}


async def _grpcurl(gateway: Gateway, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    assert gateway.address.startswith("127.0.0.1:")
    done = await run_peer(
        [str(peer("grpcurl")), "-plaintext", *args[:-1], gateway.address, args[-1]],
        home=tmp_path / "home",
    )
    return done.returncode, done.stdout, done.stderr


async def _describe(gateway: Gateway, tmp_path: Path, *symbol: str) -> tuple[int, str, str]:
    done = await run_peer(
        [str(peer("grpcurl")), "-plaintext", gateway.address, "describe", *symbol],
        home=tmp_path / "home",
    )
    return done.returncode, done.stdout, done.stderr


async def test_list_shows_the_services(gateway: Gateway, tmp_path: Path) -> None:
    code, out, err = await _grpcurl(gateway, tmp_path, "list")
    assert code == 0, err
    assert set(out.split()) >= {"jetgate.v1.EventGateway", "grpc.health.v1.Health"}


async def test_publish_with_json_any_payload(gateway: Gateway, tmp_path: Path, nc: Client) -> None:
    code, out, err = await _grpcurl(
        gateway, tmp_path, "-d", json.dumps(ORDER), "jetgate.v1.EventGateway/Publish"
    )
    assert code == 0, err
    reply = json.loads(out)
    assert reply["subject"] == "orders.OrderPlaced.o-42"
    stored = await nc.jetstream().get_last_msg("ORDERS", reply["subject"])
    placed = orders_pb2.OrderPlaced.FromString(stored.data)
    assert (placed.order_id, placed.customer_id, placed.total.nanos) == ("o-42", "c-7", 980000000)
    assert (stored.headers or {})["tenant"] == "acme"


async def test_errors_show_bad_request_details(gateway: Gateway, tmp_path: Path) -> None:
    bad = json.loads(json.dumps(ORDER))
    bad["event"]["key"] = "o.42"
    code, _, err = await _grpcurl(
        gateway, tmp_path, "-d", json.dumps(bad), "jetgate.v1.EventGateway/Publish"
    )
    assert code != 0
    assert "InvalidArgument" in err
    assert "google.rpc.BadRequest" in err
    assert '"field": "event.key"' in err


async def test_health_check(gateway: Gateway, tmp_path: Path) -> None:
    code, out, err = await _grpcurl(gateway, tmp_path, "grpc.health.v1.Health/Check")
    assert code == 0, err
    assert json.loads(out) == {"status": "SERVING"}


async def test_list_shows_both_reflection_versions(gateway: Gateway, tmp_path: Path) -> None:
    code, out, err = await _grpcurl(gateway, tmp_path, "list")
    assert code == 0, err
    assert {
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= set(out.split())


async def test_describe_a_method(gateway: Gateway, tmp_path: Path) -> None:
    code, out, err = await _describe(gateway, tmp_path, "jetgate.v1.EventGateway.Publish")
    assert code == 0, err
    assert (
        "rpc Publish ( .jetgate.v1.PublishRequest ) returns ( .jetgate.v1.PublishResponse )" in out
    )


async def test_describe_every_listed_service(gateway: Gateway, tmp_path: Path) -> None:
    code, out, err = await _describe(gateway, tmp_path)
    assert code == 0, err
    assert "rpc PublishStream ( stream .jetgate.v1.PublishBatchRequest )" in out
    assert "service ServerReflection" in out


async def test_describe_event_types_and_publish_one_known_only_from_a_descriptor_set(
    gateway_config: GatewayConfig, tmp_path: Path, nc: Client
) -> None:
    """A type from a FileDescriptorSet lives in its own pool: reflection still resolves it,
    so grpcurl encodes its Any payload from JSON."""
    descriptor_set = protoc(tmp_path, {"acme/billing/v1/billing.proto": BILLING_PROTO})
    config = dataclasses.replace(
        gateway_config,
        descriptor_sets=(str(descriptor_set),),
        streams=(*gateway_config.streams, StreamConfig(name="BILLING", subjects=("billing.>",))),
        routes=(
            *gateway_config.routes,
            RouteConfig(match="acme.billing.v1.*", stream="BILLING", subject_prefix="billing"),
        ),
    )
    async with serving(config) as gateway:
        code, out, err = await _describe(
            gateway, tmp_path, "jetgate.examples.orders.v1.OrderPlaced"
        )
        assert code == 0, err
        assert "message OrderPlaced {" in out
        code, out, err = await _describe(gateway, tmp_path, "acme.billing.v1.InvoiceIssued")
        assert code == 0, err
        assert "message InvoiceIssued {" in out
        invoice = {
            "event": {
                "key": "inv-1",
                "payload": {
                    "@type": "type.googleapis.com/acme.billing.v1.InvoiceIssued",
                    "invoiceId": "inv-1",
                    "amountCents": "1250",
                },
            }
        }
        code, out, err = await _grpcurl(
            gateway, tmp_path, "-d", json.dumps(invoice), "jetgate.v1.EventGateway/Publish"
        )
        assert code == 0, err
    stored = await nc.jetstream().get_last_msg("BILLING", json.loads(out)["subject"])
    assert stored.data == b"\x0a\x05inv-1\x10\xe2\x09"
