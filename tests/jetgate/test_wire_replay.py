"""The replay helpers of jetgate.wire (`time_parts`, `header_layout`) decode exactly what
`parse_time`, `decode_envelope` and `extensions` do."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from jetgate import wire

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

TIMES = [
    "2026-11-26T14:00:00.123456Z",
    "2026-11-26T14:00:00.000000Z",
    "2026-11-26T14:00:00.999999Z",
    "1969-12-31T23:59:59.500000Z",  # before 1970: seconds negative, nanos positive
    "0001-01-01T00:00:00.000001Z",
    "9999-12-31T23:59:59.999999Z",
    "2024-02-29T12:00:00.000001Z",  # a leap day
    "2026-11-26T14:00:00Z",
    "2026-11-26T14:00:00.5Z",
    "2026-11-26t14:00:00.123456z",
    "2026-11-26T16:00:00.123456+02:00",
    "2026-11-26T14:00:00.123456789Z",  # more digits: cut to microseconds
    "2026-11-26 14:00:00.123456Z",
]
BAD_TIMES = [
    "",
    "yesterday",
    "2026-13-26T14:00:00.123456Z",  # no month 13
    "2025-02-29T14:00:00.123456Z",  # no leap day in 2025
    "2026-11-26T24:00:00.123456Z",
    "2026-11-26T23:59:60.123456Z",  # leap seconds are not representable
    "2026-11-26T14:00:00.12345xZ",
    "2026-11-26T14:00:00.１２３４５６Z",  # fullwidth digits  # noqa: RUF001
    "２０２６-11-26T14:00:00.123456Z",  # noqa: RUF001
    "2026-11-26T14:00+01.123456Z",
]


def _reference(text: str) -> tuple[int, int]:
    micros = (wire.parse_time(text) - EPOCH) // timedelta(microseconds=1)
    seconds, micro = divmod(micros, 1_000_000)
    return seconds, micro * 1000


@pytest.mark.parametrize("text", TIMES)
def test_time_parts_equals_parse_time(text: str) -> None:
    assert wire.time_parts(text) == _reference(text)
    assert wire.time_parts(text) == wire.time_parts(text)  # cached the second time


def test_time_parts_is_exact_across_seconds() -> None:
    moment = datetime(2026, 11, 26, 23, 59, 58, 999_990, tzinfo=UTC)
    for step in range(40):
        text = wire.format_time(moment + timedelta(microseconds=step))
        seconds, nanos = wire.time_parts(text)
        assert EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000) == wire.parse_time(
            text
        )
        assert 0 <= nanos < 1_000_000_000


@pytest.mark.parametrize("text", BAD_TIMES)
def test_time_parts_refuses_what_parse_time_refuses(text: str) -> None:
    assert _refused(wire.parse_time, text)
    assert _refused(wire.time_parts, text)


def _refused(parse: Callable[[str], object], text: str) -> bool:
    try:
        parse(text)
    except ValueError:
        return True
    return False


HEADER_SETS = [
    {},
    {"Nats-Msg-Id": "a", "ce-id": "a", "ce-type": "t", "ce-time": "x", "content-type": "y"},
    {"order-channel": "web", "ce-tenant": "%41b", "CE-Region": '"eu"', "traceparent": "00-1"},
    {"ce-Partition": "1", "ce-partition": "2", "X-User": "u", "Jetgate-Principal": "p"},
    {"Status": "404", "Description": "No Messages", "Nats-TTL": "5", "tracestate": "a=b"},
    {"ce-": "empty name", "cE-specVersion": "1.0", "nats-anything": "v", "x": "y"},
]


@pytest.mark.parametrize("headers", HEADER_SETS)
def test_header_layout_splits_like_decode_envelope_and_extensions(
    headers: dict[str, str],
) -> None:
    layout = wire.header_layout(tuple(headers))
    user = {name: value for name, value in headers.items() if not wire.is_reserved_header(name)}
    assert {name: headers[name] for name in layout.user} == user
    assert list(layout.user) == list(user)
    found = {attr: wire.attribute_value(headers[name]) for name, attr in layout.extensions}
    assert found == wire.extensions(headers)
    if headers:
        full = {**headers, "ce-id": "i", "ce-type": "t", "ce-time": ""}
        decoded = wire.decode_envelope("a.b.c", full)
        assert {n: full[n] for n in wire.header_layout(tuple(full)).user} == decoded.headers
