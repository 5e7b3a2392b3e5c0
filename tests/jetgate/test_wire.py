"""The NATS wire contract: key/id/header rules, subjects, UUIDv7 ids, times, header codec."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone

import pytest

from jetgate import wire
from jetgate.wire import Envelope
from tests.support.eventually import eventually

ORDER_PLACED = "jetgate.examples.orders.v1.OrderPlaced"


# --- keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "o-42",
        "a",
        "order_1",
        "tenant:acme:order:7",
        "2026-11-26",
        "ünïcødé-κλειδί",
        "注文-42",
        "a" * 128,
    ],
)
def test_valid_keys(key: str) -> None:
    assert wire.key_problem(key) is None


@pytest.mark.parametrize(
    "key",
    [
        "",
        ".",
        "a.b",
        "*",
        "a*",
        ">",
        "a>",
        "a b",
        " ",
        "a\tb",
        "a\nb",
        "a\rb",
        "a\x00b",
        "\x01",
        "a\x1fb",
        "a\x7fb",
        "a" * 129,
    ],
)
def test_invalid_keys(key: str) -> None:
    assert wire.key_problem(key) is not None


def test_key_length_boundary_is_128() -> None:
    assert wire.MAX_KEY_LENGTH == 128
    assert wire.key_problem("k" * 128) is None
    problem = wire.key_problem("k" * 129)
    assert problem is not None
    assert "129" in problem
    assert "128" in problem


def test_key_problem_names_the_bad_character() -> None:
    problem = wire.key_problem("o.42")
    assert problem is not None
    assert "'.'" in problem


# --- event ids ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event_id",
    [
        "",  # empty: the gateway generates one
        "0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b",
        "order-42:placed",
        "x" * 128,
        "!~",
    ],
)
def test_valid_event_ids(event_id: str) -> None:
    assert wire.event_id_problem(event_id) is None


@pytest.mark.parametrize(
    "event_id",
    ["x" * 129, "has space", "tab\there", "line\nbreak", "nul\x00", "ünï", "del\x7f"],
)
def test_invalid_event_ids(event_id: str) -> None:
    assert wire.event_id_problem(event_id) is not None


def test_generated_ids_are_valid_event_ids() -> None:
    assert wire.event_id_problem(wire.new_event_id()) is None


# --- user headers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "Nats-Msg-Id",
        "nats-msg-id",
        "NATS-TTL",
        "nats-anything",
        "Nats-Expected-Last-Sequence",
        "CE-ID",
        "ce-id",
        "ce-type",
        "Ce-Source",
        "ce-custom-extension",
        "traceparent",
        "TraceParent",
        "TraceState",
        "tracestate",
        "baggage",
        "BAGGAGE",
        "Content-Type",
        "content-type",
    ],
)
def test_reserved_header_names_are_rejected_case_insensitively(name: str) -> None:
    problem = wire.header_problem(name, "value")
    assert problem is not None
    assert "reserved" in problem


@pytest.mark.parametrize(
    "name",
    ["", "a:b", "X-Tenant:", "a b", " X-Tenant", "X-Tenant\t", "X\r\nInjected", "ünï", "h" * 129],
)
def test_invalid_header_names(name: str) -> None:
    problem = wire.header_problem(name, "value")
    assert problem is not None
    assert "header name" in problem


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\r\nX-Injected: 1", "\n"])
def test_header_values_with_cr_or_lf_are_rejected(value: str) -> None:
    problem = wire.header_problem("X-Tenant", value)
    assert problem is not None
    assert "CR or LF" in problem


def test_header_value_length_boundary() -> None:
    assert wire.header_problem("X-Blob", "v" * wire.MAX_HEADER_VALUE_LENGTH) is None
    problem = wire.header_problem("X-Blob", "v" * (wire.MAX_HEADER_VALUE_LENGTH + 1))
    assert problem is not None
    assert "longer" in problem


def test_header_name_length_boundary() -> None:
    assert wire.header_problem("h" * 128, "v") is None
    assert wire.header_problem("h" * 129, "v") is not None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Tenant", "acme"),
        ("tenant-id", "42"),
        ("Correlation_Id", "a b c"),  # spaces inside a value are fine
        ("x", "ünïcødé"),
        ("Natsy", "not the Nats- prefix"),
        ("cet", "not the ce- prefix"),
        ("Content-Length-Hint", "3"),
        ("Accept", "*/*"),
    ],
)
def test_ok_headers(name: str, value: str) -> None:
    assert wire.header_problem(name, value) is None


# --- subjects, type names, type URLs ------------------------------------------------------


def test_subject_is_prefix_simple_type_name_and_key() -> None:
    assert wire.subject("orders", ORDER_PLACED, "o-42") == "orders.OrderPlaced.o-42"
    assert wire.subject("acme.billing", "acme.billing.v1.Paid", "k") == "acme.billing.Paid.k"


def test_key_filter_matches_any_type_of_one_key() -> None:
    assert wire.key_filter("orders", "o-42") == "orders.*.o-42"
    assert wire.key_filter("a.b", "k:1") == "a.b.*.k:1"


@pytest.mark.parametrize(
    ("full_name", "simple"),
    [(ORDER_PLACED, "OrderPlaced"), ("a.v1.X", "X"), ("NoPackage", "NoPackage")],
)
def test_type_name(full_name: str, simple: str) -> None:
    assert wire.type_name(full_name) == simple


def test_type_url_and_back() -> None:
    url = wire.type_url(ORDER_PLACED)
    assert url == "type.googleapis.com/jetgate.examples.orders.v1.OrderPlaced"
    assert wire.type_from_url(url) == ORDER_PLACED


@pytest.mark.parametrize(
    ("url", "full_name"),
    [
        ("type.googleapis.com/a.b.C", "a.b.C"),
        ("example.com/schemas/v2/a.b.C", "a.b.C"),
        ("a.b.C", "a.b.C"),
    ],
)
def test_type_from_url_takes_the_part_after_the_last_slash(url: str, full_name: str) -> None:
    assert wire.type_from_url(url) == full_name


@pytest.mark.parametrize("prefix", ["orders", "acme.billing", "a-b.c_d", "v2"])
def test_valid_prefixes(prefix: str) -> None:
    assert wire.prefix_problem(prefix) is None


@pytest.mark.parametrize("prefix", ["", ".", "a.", ".a", "a..b", "a.*", "a.>", "a b", "*"])
def test_invalid_prefixes(prefix: str) -> None:
    assert wire.prefix_problem(prefix) is not None


# --- UUIDv7 event ids ---------------------------------------------------------------------


def test_new_event_id_is_an_rfc9562_uuidv7() -> None:
    before_ms = time.time_ns() // 1_000_000
    text = wire.new_event_id()
    after_ms = time.time_ns() // 1_000_000
    parsed = uuid.UUID(text)
    assert str(parsed) == text  # canonical lowercase 8-4-4-4-12 form
    assert len(text) == 36
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    # Version nibble and variant bits, checked on the raw bytes too.
    assert parsed.bytes[6] >> 4 == 0x7
    assert parsed.bytes[8] >> 6 == 0b10
    # unix_ts_ms: the first 48 bits are the creation time in milliseconds.
    ts_ms = int.from_bytes(parsed.bytes[:6], "big")
    assert before_ms <= ts_ms <= after_ms


async def test_new_event_ids_sort_by_creation_time() -> None:
    ids: list[str] = []
    for _ in range(5):
        ids.append(wire.new_event_id())
        made_ms = int.from_bytes(uuid.UUID(ids[-1]).bytes[:6], "big")
        # The next id lands in a later millisecond.
        await eventually(lambda ms=made_ms: time.time_ns() // 1_000_000 > ms, interval=0.001)
    assert sorted(ids) == ids
    stamps = [int.from_bytes(uuid.UUID(i).bytes[:6], "big") for i in ids]
    assert all(a < b for a, b in itertools.pairwise(stamps))


def test_new_event_ids_are_unique() -> None:
    ids = {wire.new_event_id() for _ in range(20_000)}
    assert len(ids) == 20_000


def test_new_event_ids_carry_random_bits() -> None:
    # Two ids from the same millisecond still differ in their 74 random bits.
    rand = {uuid.UUID(wire.new_event_id()).int & ((1 << 62) - 1) for _ in range(100)}
    assert len(rand) == 100


# --- times --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 11, 26, 14, 0, 0, 123456, tzinfo=UTC),
        datetime(2026, 11, 26, 15, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1))),
        datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-7))),
        datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(1970, 1, 1, tzinfo=UTC),
    ],
)
def test_format_time_roundtrips_and_is_always_utc_z(moment: datetime) -> None:
    text = wire.format_time(moment)
    assert text.endswith("Z")
    assert "+" not in text
    parsed = wire.parse_time(text)
    assert parsed == moment
    assert parsed.utcoffset() == timedelta(0)


def test_format_time_converts_offsets_to_utc() -> None:
    moment = datetime(2026, 11, 26, 15, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert wire.format_time(moment) == "2026-11-26T14:00:00.123456Z"
    assert wire.format_time(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == (
        "2026-01-02T03:04:05.000000Z"
    )


def test_parse_time_accepts_rfc3339_offsets() -> None:
    parsed = wire.parse_time("2026-11-26T16:00:00.5+02:00")
    assert parsed == datetime(2026, 11, 26, 14, 0, 0, 500000, tzinfo=UTC)
    assert wire.parse_time("2026-11-26T14:00:00Z") == datetime(2026, 11, 26, 14, tzinfo=UTC)


# --- header encoding ----------------------------------------------------------------------


def _envelope(
    *, headers: Mapping[str, str] | None = None, ttl_seconds: int | None = None
) -> Envelope:
    return Envelope(
        id="0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b",
        type=ORDER_PLACED,
        source="checkout-service",
        key="o-42",
        time=datetime(2026, 11, 26, 15, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1))),
        headers={} if headers is None else headers,
        ttl_seconds=ttl_seconds,
    )


def test_encode_headers_sets_every_cloudevents_header() -> None:
    headers = wire.encode_headers(_envelope(headers={"X-Tenant": "acme"}))
    assert headers == {
        "X-Tenant": "acme",
        "Nats-Msg-Id": "0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b",
        "ce-specversion": "1.0",
        "ce-id": "0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b",
        "ce-type": "jetgate.examples.orders.v1.OrderPlaced",
        "ce-source": "checkout-service",
        "ce-time": "2026-11-26T14:00:00.123456Z",
        "ce-subject": "o-42",
        "ce-dataschema": "https://type.googleapis.com/jetgate.examples.orders.v1.OrderPlaced",
        "ce-datacontenttype": "application/protobuf",
        "content-type": "application/protobuf",
    }
    assert headers["Nats-Msg-Id"] == headers["ce-id"]


def test_encode_headers_ttl_only_when_set() -> None:
    assert "Nats-TTL" not in wire.encode_headers(_envelope())
    assert wire.encode_headers(_envelope(ttl_seconds=90))["Nats-TTL"] == "90"


def test_encode_headers_adds_expectations_and_trace() -> None:
    headers = wire.encode_headers(
        _envelope(),
        expectations={
            "Nats-Expected-Last-Subject-Sequence": "7",
            "Nats-Expected-Last-Subject-Sequence-Subject": "orders.*.o-42",
        },
        trace={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )
    assert headers["Nats-Expected-Last-Subject-Sequence"] == "7"
    assert headers["Nats-Expected-Last-Subject-Sequence-Subject"] == "orders.*.o-42"
    assert headers["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert headers["ce-id"] == _envelope().id


def test_encode_headers_returns_a_new_dict_and_leaves_the_envelope_alone() -> None:
    user = {"X-Tenant": "acme"}
    envelope = _envelope(headers=user)
    first = wire.encode_headers(envelope)
    second = wire.encode_headers(envelope)
    assert first == second
    assert first is not second
    assert first is not envelope.headers
    first["X-Mutated"] = "yes"
    del first["ce-id"]
    assert "X-Mutated" not in second
    assert "ce-id" in second
    assert user == {"X-Tenant": "acme"}
    assert envelope.headers == {"X-Tenant": "acme"}
    assert wire.encode_headers(envelope) == second


def _nats_header_block(headers: Mapping[str, str]) -> bytes:
    """The header block exactly as NATS puts it on the wire (HPUB)."""
    return (
        b"NATS/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n"
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"a": "b"},
        {"X-Tenant": "acme", "X-Note": "ünïcødé ✓ 注文"},  # multi-byte values count as bytes
        wire.encode_headers(_envelope(headers={"X-Tenant": "acme"}, ttl_seconds=5)),
    ],
)
def test_encoded_headers_size_is_the_wire_size(headers: Mapping[str, str]) -> None:
    assert wire.encoded_headers_size(headers) == len(_nats_header_block(headers))


def test_encoded_headers_size_of_nothing() -> None:
    assert wire.encoded_headers_size({}) == len(b"NATS/1.0\r\n\r\n") == 12


# --- decoding -----------------------------------------------------------------------------


def test_decode_envelope_inverts_encode_headers() -> None:
    envelope = _envelope(headers={"X-Tenant": "acme", "x-request": "r-1"}, ttl_seconds=3600)
    headers = wire.encode_headers(
        envelope,
        expectations={"Nats-Expected-Last-Sequence": "3"},
        trace={
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "tracestate": "vendor=1",
            "baggage": "k=v",
        },
    )
    decoded = wire.decode_envelope("orders.OrderPlaced.o-42", headers)
    assert decoded == envelope
    assert decoded.time.utcoffset() == timedelta(0)
    # user headers kept, every reserved one stripped
    assert dict(decoded.headers) == {"X-Tenant": "acme", "x-request": "r-1"}


def test_decode_envelope_without_ttl() -> None:
    envelope = _envelope()
    decoded = wire.decode_envelope("orders.OrderPlaced.o-42", wire.encode_headers(envelope))
    assert decoded.ttl_seconds is None
    assert decoded == envelope


def test_decode_envelope_strips_reserved_headers_case_insensitively() -> None:
    headers = wire.encode_headers(_envelope())
    headers.update({"NATS-Foo": "1", "CE-Extra": "2", "TraceParent": "3", "Status": "4"})
    headers["X-Kept"] = "yes"
    decoded = wire.decode_envelope("orders.OrderPlaced.o-42", headers)
    assert dict(decoded.headers) == {"X-Kept": "yes"}


def test_decode_envelope_falls_back_to_the_subject_for_the_key() -> None:
    headers = wire.encode_headers(_envelope())
    del headers["ce-subject"]
    assert wire.decode_envelope("orders.OrderPlaced.o-99", headers).key == "o-99"


def test_decode_envelope_rejects_a_message_without_ce_type() -> None:
    headers = wire.encode_headers(_envelope())
    del headers["ce-type"]
    with pytest.raises(ValueError, match="ce-type"):
        wire.decode_envelope("orders.OrderPlaced.o-42", headers)


def test_decode_envelope_rejects_a_message_without_ce_id() -> None:
    headers = wire.encode_headers(_envelope())
    del headers["ce-id"]
    with pytest.raises(ValueError, match="ce-id"):
        wire.decode_envelope("orders.OrderPlaced.o-42", headers)


def test_decode_envelope_rejects_a_plain_nats_message() -> None:
    with pytest.raises(ValueError, match="not a jetgate event"):
        wire.decode_envelope("orders.OrderPlaced.o-42", {"X-Tenant": "acme"})


@pytest.mark.parametrize("name", ["Jetgate-Group", "jetgate-origin-stream", "JETGATE-X"])
def test_jetgate_headers_are_reserved(name: str) -> None:
    assert wire.is_reserved_header(name)
    assert "reserved" in (wire.header_problem(name, "v") or "")


def test_dead_letter_subjects_and_ids() -> None:
    assert wire.dead_letter_subject("billing", "orders.OrderPlaced.o-1") == (
        "dlq.billing.orders.OrderPlaced.o-1"
    )
    assert wire.subject_filter_covers(
        wire.dead_letter_filter("billing"), "dlq.billing.orders.OrderPlaced.o-1"
    )
    assert not wire.subject_filter_covers(
        wire.dead_letter_filter("billing"), "dlq.shipping.orders.OrderPaid.o-1"
    )
    assert wire.dead_letter_msg_id("billing", "ORDERS", 7) == "dlq:billing:ORDERS:7"
    assert wire.redrive_msg_id("e-1", 3) != wire.redrive_msg_id("e-1", 4)


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("billing", True),
        ("a_b-9", True),
        ("a.b", False),
        ("a b", False),
        ("", False),
        ("x" * 65, False),
    ],
)
def test_group_names(name: str, ok: bool) -> None:
    assert (wire.group_problem(name) is None) is ok


def test_header_text_is_one_bounded_line() -> None:
    assert wire.header_text("boom\r\n  at line 3\tx") == "boom at line 3 x"
    assert wire.header_text("") == "-"
    long = wire.header_text("x" * 5000, limit=100)
    assert len(long) == 100
    assert long.endswith("...")


def test_derived_event_ids_are_stable_uuids() -> None:
    first = wire.derived_event_id("e-1", "OrderPaid")
    assert first == wire.derived_event_id("e-1", "OrderPaid")
    assert first != wire.derived_event_id("e-1", "OrderShipped")
    assert wire.event_id_problem(first) is None
