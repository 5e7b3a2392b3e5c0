"""Router: first matching route per type, validated against streams; NATS subject coverage."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from gateway.config import RouteConfig, StreamConfig
from gateway.registry import TypeRegistry
from gateway.routing import Route, Router, RoutingError
from jetgate.wire import subject_filter_covers

ORDERS = "jetgate.examples.orders.v1"
ORDER_EVENTS = [
    f"{ORDERS}.{name}"
    for name in (
        "Address",
        "LineItem",
        "Money",
        "OrderCancelled",
        "OrderPaid",
        "OrderPlaced",
        "OrderShipped",
    )
]
BILLING_TYPES = ["acme.billing.v1.InvoiceIssued", "acme.billing.v1.OrderPlaced"]
AUDIT_TYPES = ["acme.audit.v1.Entry"]

STREAMS = (
    StreamConfig(name="ORDERS", subjects=("orders.>",)),
    StreamConfig(name="BILLING", subjects=("billing.*.*", "billing-v2.>")),
    StreamConfig(name="AUDIT", subjects=("audit.Entry.*",)),
    StreamConfig(name="EMPTY", subjects=("empty.>",)),
)


@pytest.fixture
def registry(tmp_path: Path) -> TypeRegistry:
    """The demo order types plus acme types that no Python module defines."""
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for full_name in BILLING_TYPES + AUDIT_TYPES:
        package, name = full_name.rsplit(".", 1)
        file = files.setdefault(
            package,
            descriptor_pb2.FileDescriptorProto(
                name=package.replace(".", "/") + "/events.proto", package=package, syntax="proto3"
            ),
        )
        file.message_type.add(name=name)
    path = tmp_path / "acme.binpb"
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=files.values()).SerializeToString())
    return TypeRegistry.load(modules=[f"{ORDERS}.orders_pb2"], descriptor_sets=[path])


def route(match: str, stream: str, prefix: str) -> RouteConfig:
    return RouteConfig(match=match, stream=stream, subject_prefix=prefix)


def build(
    registry: TypeRegistry, *routes: RouteConfig, streams: Sequence[StreamConfig] = STREAMS
) -> Router:
    return Router.build(routes, registry, streams)


@pytest.mark.parametrize(
    ("filter_", "sub_filter", "covers"),
    [
        ("orders.>", "orders.OrderPlaced.*", True),
        ("orders.>", "orders.OrderPlaced.o-1", True),
        ("orders.>", "orders.>", True),
        ("orders.>", "orders", False),
        ("orders.>", "billing.OrderPlaced.*", False),
        ("orders.*.*", "orders.OrderPlaced.*", True),
        ("orders.*.*", "orders.>", False),
        ("orders.*.*", "orders.OrderPlaced", False),
        ("orders.*.*", "orders.OrderPlaced.a.b", False),
        ("orders.OrderPlaced.*", "orders.OrderPlaced.*", True),
        ("orders.OrderPlaced.*", "orders.OrderPaid.*", False),
        ("orders.OrderPlaced.*", "orders.*.*", False),
        ("orders.OrderPlaced.o-1", "orders.OrderPlaced.*", False),
        ("*.OrderPlaced.*", "orders.OrderPlaced.*", True),
        ("*.*", "orders.OrderPlaced.*", False),
        (">", "orders.OrderPlaced.*", True),
        (">", "orders", True),
        ("orders.*.>", "orders.OrderPlaced.*", True),
        ("orders.*.>", "orders.*", False),
        ("orders.*", "orders.>", False),
        ("a.b", "a.b", True),
        ("a.b*", "a.bc", False),  # '*' inside a token is literal
        ("a.b*", "a.b*", True),
    ],
)
def test_subject_filter_covers(filter_: str, sub_filter: str, covers: bool) -> None:
    assert subject_filter_covers(filter_, sub_filter) is covers


@pytest.mark.parametrize(("filter_", "sub_filter"), [("a..b", "a.x.b"), ("a.>.b", "a.x.b")])
def test_subject_filter_covers_rejects_invalid_filters(filter_: str, sub_filter: str) -> None:
    with pytest.raises(ValueError, match="is not a valid subject filter"):
        subject_filter_covers(filter_, sub_filter)
    with pytest.raises(ValueError, match="is not a valid subject filter"):
        subject_filter_covers(sub_filter, filter_)


def test_first_matching_route_wins(registry: TypeRegistry) -> None:
    router = build(
        registry,
        route("acme.billing.v1.OrderPlaced", "BILLING", "billing-v2.orders"),
        route("acme.billing.v1.*", "BILLING", "billing"),
        route("acme.*", "AUDIT", "audit"),
        route(f"{ORDERS}.*", "ORDERS", "orders"),
        route(f"{ORDERS}.OrderPlaced", "BILLING", "billing"),  # shadowed by the glob
    )
    assert router.route("acme.billing.v1.OrderPlaced") == Route(
        stream="BILLING", subject_prefix="billing-v2.orders"
    )
    assert router.route("acme.billing.v1.InvoiceIssued") == Route(
        stream="BILLING", subject_prefix="billing"
    )
    assert router.route("acme.audit.v1.Entry") == Route(stream="AUDIT", subject_prefix="audit")
    assert router.route(f"{ORDERS}.OrderPlaced") == Route(stream="ORDERS", subject_prefix="orders")
    assert router.route("acme.Unknown") is None
    assert router.unrouted() == []
    assert router.unused_routes() == [route(f"{ORDERS}.OrderPlaced", "BILLING", "billing")]


def test_exact_names_and_globs(registry: TypeRegistry) -> None:
    router = build(
        registry,
        route(f"{ORDERS}.OrderPlaced", "ORDERS", "orders"),
        route(f"{ORDERS}.Order*ed", "ORDERS", "orders"),
        route(f"{ORDERS}.orderplaced", "BILLING", "billing"),  # fnmatchcase: case matters
        route("acme.billing.v1.Invoice?ssued", "BILLING", "billing"),
    )
    assert router.route(f"{ORDERS}.OrderPlaced") == Route(stream="ORDERS", subject_prefix="orders")
    assert router.event_types_by_stream() == {
        "ORDERS": [f"{ORDERS}.OrderCancelled", f"{ORDERS}.OrderPlaced", f"{ORDERS}.OrderShipped"],
        "BILLING": ["acme.billing.v1.InvoiceIssued"],
        "AUDIT": [],
        "EMPTY": [],
    }
    assert router.unrouted() == sorted(
        [
            "acme.audit.v1.Entry",
            "acme.billing.v1.OrderPlaced",
            f"{ORDERS}.Address",
            f"{ORDERS}.LineItem",
            f"{ORDERS}.Money",
            f"{ORDERS}.OrderPaid",
        ]
    )
    assert router.unused_routes() == [route(f"{ORDERS}.orderplaced", "BILLING", "billing")]


def test_event_types_by_stream_and_unrouted(registry: TypeRegistry) -> None:
    router = build(
        registry,
        route(f"{ORDERS}.*", "ORDERS", "orders"),
        route("acme.billing.v1.InvoiceIssued", "BILLING", "billing"),
    )
    assert router.event_types_by_stream() == {
        "ORDERS": ORDER_EVENTS,
        "BILLING": ["acme.billing.v1.InvoiceIssued"],
        "AUDIT": [],
        "EMPTY": [],
    }
    assert router.unrouted() == ["acme.audit.v1.Entry", "acme.billing.v1.OrderPlaced"]
    assert router.unused_routes() == []


def test_no_routes_leaves_everything_unrouted(registry: TypeRegistry) -> None:
    router = build(registry)
    assert router.unrouted() == sorted(registry.names())
    assert router.event_types_by_stream() == {s.name: [] for s in STREAMS}


@pytest.mark.parametrize("prefix", ["", "orders.", ".orders", "orders..x", "orders.*", "or ders"])
def test_invalid_subject_prefix(registry: TypeRegistry, prefix: str) -> None:
    with pytest.raises(RoutingError) as info:
        build(registry, route(f"{ORDERS}.*", "ORDERS", prefix))
    assert info.value.problems == [
        f"routes[0] (match '{ORDERS}.*'): subject prefix {prefix!r} must be literal "
        "dot-separated tokens"
    ]


def test_unknown_stream(registry: TypeRegistry) -> None:
    with pytest.raises(RoutingError) as info:
        build(registry, route(f"{ORDERS}.*", "ORDERS", "orders"), route("acme.*", "NOPE", "x"))
    assert info.value.problems == [
        "routes[1] (match 'acme.*'): unknown stream 'NOPE' (streams: AUDIT, BILLING, EMPTY, ORDERS)"
    ]


def test_subjects_not_captured_by_stream(registry: TypeRegistry) -> None:
    streams = [StreamConfig(name="ORDERS", subjects=("orders.OrderPlaced.*", "orders.OrderPaid.>"))]
    with pytest.raises(RoutingError) as info:
        build(registry, route(f"{ORDERS}.Order*", "ORDERS", "orders"), streams=streams)
    assert info.value.problems == [
        f"type {ORDERS}.{name} (routes[0], match '{ORDERS}.Order*'): subjects "
        f"orders.{name}.* are not captured by stream ORDERS "
        "(subjects: orders.OrderPlaced.*, orders.OrderPaid.>)"
        for name in ("OrderCancelled", "OrderShipped")
    ]


def test_prefix_outside_stream_subjects(registry: TypeRegistry) -> None:
    # A prefix one token deeper than `billing.*.*` allows: billing.x.InvoiceIssued.<key>.
    with pytest.raises(RoutingError, match=r"subjects billing\.x\.InvoiceIssued\.\* are not"):
        build(registry, route("acme.billing.v1.InvoiceIssued", "BILLING", "billing.x"))


def test_same_simple_name_under_one_prefix(registry: TypeRegistry) -> None:
    with pytest.raises(RoutingError) as info:
        build(
            registry,
            route(f"{ORDERS}.OrderPlaced", "ORDERS", "orders"),
            route("acme.billing.v1.*", "ORDERS", "orders"),
        )
    assert info.value.problems == [
        "type jetgate.examples.orders.v1.OrderPlaced (routes[0], match "
        f"'{ORDERS}.OrderPlaced'): acme.billing.v1.OrderPlaced has the same name and subject "
        "prefix, so both would be stored on subjects orders.OrderPlaced.<key>"
    ]


def test_same_simple_name_under_different_prefixes_is_fine(registry: TypeRegistry) -> None:
    router = build(
        registry,
        route(f"{ORDERS}.OrderPlaced", "ORDERS", "orders"),
        route("acme.billing.v1.*", "BILLING", "billing"),
    )
    assert router.route("acme.billing.v1.OrderPlaced") == Route(
        stream="BILLING", subject_prefix="billing"
    )


def test_one_prefix_belongs_to_one_stream(registry: TypeRegistry) -> None:
    streams = [
        StreamConfig(name="PLACED", subjects=("orders.OrderPlaced.*",)),
        StreamConfig(name="REST", subjects=("orders.OrderPaid.*",)),
    ]
    with pytest.raises(RoutingError, match="subject prefix 'orders' is already routed to stream"):
        build(
            registry,
            route(f"{ORDERS}.OrderPlaced", "PLACED", "orders"),
            route(f"{ORDERS}.OrderPaid", "REST", "orders"),
            streams=streams,
        )


def test_invalid_stream_subject_filter(registry: TypeRegistry) -> None:
    streams = [StreamConfig(name="ORDERS", subjects=("orders.>.x",))]
    with pytest.raises(RoutingError, match=r"stream ORDERS: 'orders\.>\.x' is not a valid subject"):
        build(registry, route(f"{ORDERS}.OrderPlaced", "ORDERS", "orders"), streams=streams)


def test_all_problems_are_reported_at_once(registry: TypeRegistry) -> None:
    with pytest.raises(RoutingError) as info:
        build(
            registry,
            route(f"{ORDERS}.*", "NOPE", "orders"),
            route("acme.*", "AUDIT", "audit.*"),
        )
    assert len(info.value.problems) == 2
    assert str(info.value).startswith("invalid routes: routes[0] (match ")
    assert isinstance(info.value, ValueError)


def test_route_is_immutable() -> None:
    value = Route(stream="ORDERS", subject_prefix="orders")
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.stream = "OTHER"  # type: ignore[misc]
