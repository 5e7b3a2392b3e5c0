"""The CloudEvents side of the wire contract (issue 15): attributes SDKs accept, values
encoded as the NATS binding says, extension attributes, and events SDKs publish."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest

from jetgate import wire

ORDER_PLACED = "jetgate.examples.orders.v1.OrderPlaced"


def _envelope(*, id: str = "e-1", source: str = "/checkout", key: str = "o-42") -> wire.Envelope:
    moment = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    return wire.Envelope(id=id, type=ORDER_PLACED, source=source, key=key, time=moment)


def test_dataschema_is_an_absolute_uri_that_is_still_the_type_url() -> None:
    schema = wire.encode_headers(_envelope())[wire.CE_DATASCHEMA]
    assert schema == f"https://type.googleapis.com/{ORDER_PLACED}"
    parts = urlsplit(schema)
    assert (parts.scheme, parts.netloc) == ("https", "type.googleapis.com")  # absolute
    assert wire.type_from_url(schema) == ORDER_PLACED


def test_events_stored_with_the_old_dataschema_still_decode() -> None:
    headers = wire.encode_headers(_envelope())
    headers[wire.CE_DATASCHEMA] = f"type.googleapis.com/{ORDER_PLACED}"  # before issue 15
    envelope = wire.decode_envelope("orders.OrderPlaced.o-42", headers)
    assert envelope.type == wire.type_from_url(headers[wire.CE_DATASCHEMA]) == ORDER_PLACED


def test_datacontenttype_is_in_both_headers() -> None:
    headers = wire.encode_headers(_envelope())
    assert headers["ce-datacontenttype"] == headers["content-type"] == "application/protobuf"


@pytest.mark.parametrize(
    ("value", "header"),
    [
        ("o-42", "o-42"),
        ("a%b", "a%25b"),
        ('say "hi"', "say%20%22hi%22"),
        ("café", "caf%C3%A9"),
        ("Euro € 😀", "Euro%20%E2%82%AC%20%F0%9F%98%80"),  # the binding's own example
    ],
)
def test_attribute_values_are_percent_encoded_as_the_nats_binding_says(
    value: str, header: str
) -> None:
    assert wire.header_attribute(value) == header
    assert wire.attribute_value(header) == value
    headers = wire.encode_headers(_envelope(id=value, key=value))
    assert (headers[wire.CE_ID], headers[wire.CE_SUBJECT]) == (header, header)
    assert headers[wire.MSG_ID] == value  # JetStream's id is not a CloudEvents header
    decoded = wire.decode_envelope("orders.OrderPlaced.x", headers)
    assert (decoded.id, decoded.key) == (value, value)


def test_attribute_values_decode_quoted_strings_lower_case_and_keep_invalid_escapes() -> None:
    assert wire.attribute_value('"a \\"b\\""') == 'a "b"'
    assert wire.attribute_value("caf%c3%a9") == "café"
    assert wire.attribute_value("%C0%A0x") == "%C0%A0x"  # overlong: not UTF-8, kept


def test_an_event_a_cloudevents_sdk_published_decodes_with_its_extensions() -> None:
    # What sdk-go's NATS JetStream binding writes: no ce-subject, no Nats-Msg-Id,
    # RFC3339Nano time, content-type, extensions as ce-<name>.
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "sdk-1",
        "ce-source": "//go-sdk/test",
        "ce-type": ORDER_PLACED,
        "ce-time": "2026-11-30T06:50:01.123456789Z",
        "ce-dataschema": f"https://type.googleapis.com/{ORDER_PLACED}",
        "content-type": "application/protobuf",
        "ce-tenant": "acme",
        "ce-Region": "eu%20west",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "X-Request-Id": "r-1",
    }
    envelope = wire.decode_envelope("orders.OrderPlaced.o-7", headers)
    assert (envelope.id, envelope.key, envelope.source) == ("sdk-1", "o-7", "//go-sdk/test")
    assert envelope.time == datetime(2026, 11, 30, 6, 50, 1, 123456, tzinfo=UTC)
    assert envelope.headers == {"X-Request-Id": "r-1"}
    assert wire.extensions(headers) == {"tenant": "acme", "region": "eu west"}


def test_jetgate_events_have_no_extensions() -> None:
    assert wire.extensions(wire.encode_headers(_envelope())) == {}


@pytest.mark.parametrize(
    "text", ["2026-11-30t06:50:01z", "2026-11-30T07:50:01+01:00", "2026-11-30T06:50:01.000Z"]
)
def test_parse_time_takes_any_rfc3339_time(text: str) -> None:
    assert wire.parse_time(text) == datetime(2026, 11, 30, 6, 50, 1, tzinfo=UTC)


def test_a_ce_time_that_is_not_rfc3339_makes_the_event_undecodable() -> None:
    headers = {**wire.encode_headers(_envelope()), wire.CE_TIME: "yesterday"}
    with pytest.raises(ValueError, match="RFC 3339"):
        wire.decode_envelope("orders.OrderPlaced.o-42", headers)


@pytest.mark.parametrize(
    "source",
    [
        "jetgate",
        "/checkout",
        "orders-service",
        "https://shop.example/orders?region=eu#x",
        "urn:shop:orders",
        "//checkout:8080/a%20b",
        "http://[::1]:80/x",
        "mailto:ops@shop.example",
        "/läden/köln",  # an IRI: stored percent-encoded, its URI
    ],
)
def test_uri_references_are_sources(source: str) -> None:
    assert wire.uri_reference_problem("source", source) is None


@pytest.mark.parametrize(
    "source",
    ["", "check out", "tab\there", "/a%2", "1a:b", "http://h:ab/", "x#a#b", "/a]b", 'a"b', "a\\b"],
)
def test_what_is_no_uri_reference_is_refused(source: str) -> None:
    problem = wire.uri_reference_problem("source", source)
    assert problem is not None
    assert "source" in problem
