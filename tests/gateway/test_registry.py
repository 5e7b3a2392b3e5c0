"""TypeRegistry: types from generated modules and FileDescriptorSet files."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from gateway.registry import PayloadError, RegistryError, TypeRegistry, UnknownTypeError
from jetgate.examples.orders.v1 import orders_pb2

ORDERS_MODULE = "jetgate.examples.orders.v1.orders_pb2"
ORDERS = "jetgate.examples.orders.v1"
REPO = Path(__file__).resolve().parents[2]

BILLING_PROTO = """
syntax = "proto3";
package acme.billing.v1;
import "google/protobuf/timestamp.proto";

message InvoiceIssued {
  string invoice_id = 1;
  int64 amount_cents = 2;
  google.protobuf.Timestamp issued_at = 3;
  Line first_line = 4;
  map<string, string> labels = 5;
  message Line { string sku = 1; }
}
"""
# A field tag the demo types do not define: number 99, varint, value 1.
UNKNOWN_FIELD = bytes([0x98, 0x06, 0x01])


def protoc(tmp_path: Path, files: dict[str, str], *, include_imports: bool = True) -> Path:
    """Write `files` (path -> .proto text) under tmp_path/src and compile a descriptor set."""
    src = tmp_path / "src"
    for name, text in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(textwrap.dedent(text))
    out = tmp_path / f"set-{len(list(tmp_path.glob('set-*')))}.binpb"
    args = [sys.executable, "-m", "grpc_tools.protoc", f"-I{src}", f"--descriptor_set_out={out}"]
    if include_imports:
        args.append("--include_imports")
    subprocess.run([*args, *files], check=True, capture_output=True)
    return out


@pytest.fixture
def billing_set(tmp_path: Path) -> Path:
    return protoc(tmp_path, {"acme/billing/v1/billing.proto": BILLING_PROTO})


def placed() -> orders_pb2.OrderPlaced:
    return orders_pb2.OrderPlaced(
        order_id="o-42",
        customer_id="c-7",
        items=[orders_pb2.LineItem(sku="sku-1", quantity=2)],
        total=orders_pb2.Money(currency_code="EUR", units=12, nanos=500_000_000),
    )


def test_module_registers_top_level_messages_of_its_file() -> None:
    registry = TypeRegistry.load(modules=[ORDERS_MODULE])
    assert registry.names() == {
        f"{ORDERS}.{name}"
        for name in (
            "Money",
            "Address",
            "LineItem",
            "OrderPlaced",
            "OrderPaid",
            "OrderShipped",
            "OrderCancelled",
        )
    }
    assert f"{ORDERS}.OrderPlaced" in registry
    assert "google.protobuf.Timestamp" not in registry  # imported, not defined by the file
    assert registry.message_class(f"{ORDERS}.OrderPlaced") is orders_pb2.OrderPlaced
    assert registry.source(f"{ORDERS}.OrderPaid") == f"module {ORDERS_MODULE}"


def test_parse_valid_payload() -> None:
    registry = TypeRegistry.load(modules=[ORDERS_MODULE])
    message = registry.parse(f"{ORDERS}.OrderPlaced", placed().SerializeToString())
    assert isinstance(message, orders_pb2.OrderPlaced)
    assert message == placed()
    assert registry.parse(f"{ORDERS}.OrderPaid", b"") == orders_pb2.OrderPaid()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xff\xff\xff", id="garbage"),
        pytest.param(b"\x0a\x05o-4", id="truncated"),
        pytest.param(b"\x0a\x02\xc3\x28", id="invalid-utf8-string"),
        pytest.param(b"\x22\x03\x08\x01", id="truncated-submessage"),
    ],
)
def test_parse_invalid_payload_raises_payload_error(data: bytes) -> None:
    registry = TypeRegistry.load(modules=[ORDERS_MODULE])
    with pytest.raises(PayloadError, match=rf"not a valid {ORDERS}\.OrderPlaced"):
        registry.parse(f"{ORDERS}.OrderPlaced", data)


def test_parse_keeps_unknown_fields() -> None:
    registry = TypeRegistry.load(modules=[ORDERS_MODULE])
    data = placed().SerializeToString() + UNKNOWN_FIELD
    message = registry.parse(f"{ORDERS}.OrderPlaced", data)
    assert isinstance(message, orders_pb2.OrderPlaced)
    assert message.order_id == "o-42"
    assert message.SerializeToString().endswith(UNKNOWN_FIELD)


def test_unknown_type() -> None:
    registry = TypeRegistry.load(modules=[ORDERS_MODULE])
    assert "acme.Nope" not in registry
    with pytest.raises(UnknownTypeError, match=r"'acme\.Nope' is not a registered event type"):
        registry.message_class("acme.Nope")
    with pytest.raises(UnknownTypeError):
        registry.parse("acme.Nope", b"")


def test_descriptor_set_registers_types_without_python_module(billing_set: Path) -> None:
    registry = TypeRegistry.load(descriptor_sets=[billing_set])
    # Well-known types pulled in by --include_imports and nested messages are not events.
    assert registry.names() == {"acme.billing.v1.InvoiceIssued"}
    assert registry.source("acme.billing.v1.InvoiceIssued") == (
        f"descriptor set {billing_set} (acme/billing/v1/billing.proto)"
    )
    cls = registry.message_class("acme.billing.v1.InvoiceIssued")
    assert cls.DESCRIPTOR.full_name == "acme.billing.v1.InvoiceIssued"
    # invoice_id "inv-1", amount_cents 1999, first_line {sku "s"}, then an unknown field.
    data = b"\x0a\x05inv-1\x10\xcf\x0f\x22\x03\x0a\x01s" + UNKNOWN_FIELD
    message = registry.parse("acme.billing.v1.InvoiceIssued", data)
    assert message.SerializeToString(deterministic=True) == data
    fields = {f.name: v for f, v in message.ListFields()}
    assert fields["invoice_id"] == "inv-1"
    assert fields["amount_cents"] == 1999
    with pytest.raises(PayloadError):
        registry.parse("acme.billing.v1.InvoiceIssued", b"\xff\xff\xff")


def test_modules_and_descriptor_sets_combine(billing_set: Path) -> None:
    registry = TypeRegistry.load(modules=[ORDERS_MODULE], descriptor_sets=[str(billing_set)])
    assert {"acme.billing.v1.InvoiceIssued", f"{ORDERS}.OrderPlaced"} <= registry.names()
    assert len(registry) == 8


def test_same_definition_from_module_and_descriptor_set_is_fine(tmp_path: Path) -> None:
    # protoc fills in every json_name; the generated module does not: still equal.
    orders_set = protoc(
        tmp_path,
        {"jetgate/examples/orders/v1/orders.proto": _demo_proto()},
    )
    registry = TypeRegistry.load(modules=[ORDERS_MODULE], descriptor_sets=[orders_set, orders_set])
    assert registry.message_class(f"{ORDERS}.OrderPlaced") is orders_pb2.OrderPlaced  # first wins
    assert len(registry) == 7


def test_conflicting_definitions_raise(tmp_path: Path) -> None:
    other = protoc(
        tmp_path,
        {
            "other/orders.proto": f"""
            syntax = "proto3";
            package {ORDERS};
            message OrderPlaced {{ int64 order_id = 1; }}
            """
        },
    )
    with pytest.raises(RegistryError) as info:
        TypeRegistry.load(modules=[ORDERS_MODULE], descriptor_sets=[other])
    assert str(info.value) == (
        f"type {ORDERS}.OrderPlaced is defined differently by module {ORDERS_MODULE} "
        f"and by descriptor set {other} (other/orders.proto)"
    )


def test_conflict_in_a_referenced_unregistered_type_is_detected(tmp_path: Path) -> None:
    # google.type.* files are dependencies only: Money is not registered itself, but a
    # different Money makes a different InvoiceIssued.
    billing = """
    syntax = "proto3";
    package acme.billing.v1;
    import "google/type/money.proto";
    message InvoiceIssued { google.type.Money amount = 1; }
    """
    sets = [
        protoc(
            tmp_path / variant,
            {
                "acme/billing/v1/billing.proto": billing,
                "google/type/money.proto": (
                    f'syntax = "proto3"; package google.type; message Money {{ {units} = 1; }}'
                ),
            },
        )
        for variant, units in (("a", "int64 units"), ("b", "string units"))
    ]
    assert TypeRegistry.load(descriptor_sets=sets[:1]).names() == {"acme.billing.v1.InvoiceIssued"}
    with pytest.raises(RegistryError, match=r"InvoiceIssued is defined differently by"):
        TypeRegistry.load(descriptor_sets=sets)


def test_bad_module_names_raise() -> None:
    with pytest.raises(RegistryError, match=r"'no\.such_pb2' cannot be imported: ModuleNotFound"):
        TypeRegistry.load(modules=["no.such_pb2"])
    with pytest.raises(RegistryError, match=r"'jetgate\.wire' is not a generated protobuf module"):
        TypeRegistry.load(modules=["jetgate.wire"])


def test_file_that_is_not_a_descriptor_set_raises(tmp_path: Path) -> None:
    text = tmp_path / "billing.proto"
    text.write_text(BILLING_PROTO)
    with pytest.raises(RegistryError, match=r"billing\.proto: not a FileDescriptorSet"):
        TypeRegistry.load(descriptor_sets=[text])
    empty = tmp_path / "empty.binpb"
    empty.write_bytes(b"")
    with pytest.raises(RegistryError, match=r"holds no \.proto files"):
        TypeRegistry.load(descriptor_sets=[empty])
    with pytest.raises(RegistryError, match=r"missing\.binpb: No such file"):
        TypeRegistry.load(descriptor_sets=[tmp_path / "missing.binpb"])


def test_descriptor_set_without_imports_raises(tmp_path: Path) -> None:
    partial = protoc(
        tmp_path, {"acme/billing/v1/billing.proto": BILLING_PROTO}, include_imports=False
    )
    with pytest.raises(
        RegistryError, match=r"imports 'google/protobuf/timestamp\.proto', which the set does not"
    ):
        TypeRegistry.load(descriptor_sets=[partial])


def test_descriptor_set_with_invalid_file_raises(tmp_path: Path) -> None:
    file = descriptor_pb2.FileDescriptorProto(name="bad.proto", package="bad", syntax="proto3")
    message = file.message_type.add(name="Event")
    message.field.add(
        name="thing",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        type_name=".bad.Missing",
    )
    path = tmp_path / "bad.binpb"
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=[file]).SerializeToString())
    with pytest.raises(RegistryError, match=r"bad\.binpb: file 'bad.proto': .*bad.Missing"):
        TypeRegistry.load(descriptor_sets=[path])


def _demo_proto() -> str:
    return (REPO / "proto/jetgate/examples/orders/v1/orders.proto").read_text()
