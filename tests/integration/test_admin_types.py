"""Admin ListTypes/GetSchema: the registered types with their routes, and schemas a client
in any language can load (checked by loading them into a fresh descriptor pool)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from gateway.config import GatewayConfig, RouteConfig, StreamConfig
from jetgate import wire
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import admin_pb2, admin_pb2_grpc
from tests.gateway.test_registry import protoc
from tests.integration.admin_support import admin_stub, resource, violations
from tests.integration.conftest import order_placed, serving

MONEY_PROTO = """
syntax = "proto3";
package acme.common.v1;
import "google/protobuf/timestamp.proto";
message Amount { int64 cents = 1; string currency = 2; google.protobuf.Timestamp as_of = 3; }
"""
INVOICE_PROTO = """
syntax = "proto3";
package acme.billing.v1;
import "google/protobuf/duration.proto";
import "acme/common/v1/money.proto";
message InvoiceIssued {
  string invoice_id = 1;
  acme.common.v1.Amount amount = 2;
  google.protobuf.Duration due_in = 3;
}
"""
INVOICE = "acme.billing.v1.InvoiceIssued"


@pytest.fixture
def billing_config(gateway_config: GatewayConfig, tmp_path: Path) -> GatewayConfig:
    """The demo config plus types from a descriptor set (two levels of imports), routed."""
    descriptor_set = protoc(
        tmp_path,
        {"acme/common/v1/money.proto": MONEY_PROTO, "acme/billing/v1/billing.proto": INVOICE_PROTO},
    )
    return dataclasses.replace(
        gateway_config,
        descriptor_sets=(str(descriptor_set),),
        streams=(*gateway_config.streams, StreamConfig(name="BILLING", subjects=("billing.>",))),
        routes=(
            *gateway_config.routes,
            RouteConfig(match="acme.billing.v1.*", stream="BILLING", subject_prefix="billing"),
        ),
    )


@pytest.fixture
async def admin(billing_config: GatewayConfig) -> AsyncIterator[admin_pb2_grpc.AdminAsyncStub]:
    async with serving(billing_config) as gateway, admin_stub(gateway) as stub:
        yield stub


def load(files: descriptor_pb2.FileDescriptorSet) -> descriptor_pool.DescriptorPool:
    """Add the files to a fresh pool in the order given (fails if an import comes later)."""
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool


async def test_list_types_names_every_registered_type_with_its_route_and_file(
    admin: admin_pb2_grpc.AdminAsyncStub,
) -> None:
    reply = await admin.ListTypes(admin_pb2.ListTypesRequest(), timeout=20)

    by_name = {t.name: t for t in reply.types}
    assert [t.name for t in reply.types] == sorted(by_name)
    demo = {f"jetgate.examples.orders.v1.{n}" for n in orders_pb2.DESCRIPTOR.message_types_by_name}
    assert set(by_name) == demo | {"acme.common.v1.Amount", INVOICE}
    placed = by_name["jetgate.examples.orders.v1.OrderPlaced"]
    assert placed == admin_pb2.EventTypeInfo(
        name="jetgate.examples.orders.v1.OrderPlaced",
        type_url=wire.type_url("jetgate.examples.orders.v1.OrderPlaced"),
        stream="ORDERS",
        subject_prefix="orders",
        file="jetgate/examples/orders/v1/orders.proto",
    )
    # Money is a value type: registered (its module's) but routed nowhere.
    money = by_name["jetgate.examples.orders.v1.Money"]
    assert (money.stream, money.subject_prefix) == ("", "")
    invoice = by_name[INVOICE]
    assert (invoice.stream, invoice.subject_prefix, invoice.file) == (
        "BILLING",
        "billing",
        "acme/billing/v1/billing.proto",
    )


async def test_a_schema_loads_into_a_fresh_pool_and_decodes_the_type(
    admin: admin_pb2_grpc.AdminAsyncStub,
) -> None:
    asked = admin_pb2.GetSchemaRequest(event_type="jetgate.examples.orders.v1.OrderPlaced")
    reply = await admin.GetSchema(asked, timeout=20)

    assert reply.event_type == "jetgate.examples.orders.v1.OrderPlaced"
    assert [f.name for f in reply.file_descriptor_set.file] == [
        "google/protobuf/timestamp.proto",
        "jetgate/examples/orders/v1/orders.proto",
    ]
    pool = load(reply.file_descriptor_set)
    found = pool.FindMessageTypeByName("jetgate.examples.orders.v1.OrderPlaced")
    decoded = message_factory.GetMessageClass(found).FromString(
        order_placed("o-9").SerializeToString()
    )
    assert decoded.order_id == "o-9"  # type: ignore[attr-defined]
    assert decoded.total.nanos == 980_000_000  # type: ignore[attr-defined]


async def test_a_descriptor_set_types_schema_holds_its_imports_first(
    admin: admin_pb2_grpc.AdminAsyncStub,
) -> None:
    # Asked by type URL, as a client holding an Any would.
    asked = admin_pb2.GetSchemaRequest(event_type=wire.type_url(INVOICE))
    reply = await admin.GetSchema(asked, timeout=20)

    names = [f.name for f in reply.file_descriptor_set.file]
    assert sorted(names) == sorted(
        [
            "google/protobuf/duration.proto",
            "google/protobuf/timestamp.proto",
            "acme/common/v1/money.proto",
            "acme/billing/v1/billing.proto",
        ]
    )
    assert names.index("google/protobuf/timestamp.proto") < names.index(
        "acme/common/v1/money.proto"
    )
    assert names[-1] == "acme/billing/v1/billing.proto"
    invoice_class = message_factory.GetMessageClass(
        load(reply.file_descriptor_set).FindMessageTypeByName(INVOICE)
    )
    invoice = invoice_class()
    invoice.amount.cents = 1250  # type: ignore[attr-defined]
    invoice.amount.as_of.seconds = 7  # type: ignore[attr-defined]
    again = invoice_class.FromString(invoice.SerializeToString())
    assert (again.amount.cents, again.amount.as_of.seconds) == (1250, 7)  # type: ignore[attr-defined]


async def test_get_schema_refusals(admin: admin_pb2_grpc.AdminAsyncStub) -> None:
    # Any type URL prefix names the type after its last '/' (as Any does).
    other_prefix = admin_pb2.GetSchemaRequest(event_type=f"example.com/schemas/{INVOICE}")
    assert (await admin.GetSchema(other_prefix, timeout=20)).event_type == INVOICE
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await admin.GetSchema(admin_pb2.GetSchemaRequest(event_type="acme.v1.Nope"), timeout=20)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    found = resource(unknown.value)
    assert (found.resource_type, found.resource_name) == ("event type", "acme.v1.Nope")
    for name in ("", "not a name", "acme..Nope", "type.googleapis.com/"):
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await admin.GetSchema(admin_pb2.GetSchemaRequest(event_type=name), timeout=20)
        assert "event_type" in violations(bad.value), name
