"""Building the NATS messages of validated events, and the wire limits validation relies on."""

from __future__ import annotations

import pytest

from gateway.validation import PreparedEvent, atomic_batch_problems, outbound
from jetgate import wire
from jetgate.v1 import event_pb2

TRACE = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}


def _event(
    room: int, subject: str = "orders.OrderPlaced.o-1", event_id: str = "e-1", **condition: int
) -> PreparedEvent:
    conflict = None
    if condition:
        ((name, expected),) = condition.items()
        conflict = event_pb2.SequenceConflict(condition=name, expected_sequence=expected)
    return PreparedEvent(
        event_id=event_id,
        client_id=True,
        event_type="jetgate.examples.orders.v1.OrderPlaced",
        key="o-1",
        stream="ORDERS",
        subject=subject,
        payload=b"x",
        headers={wire.MSG_ID: event_id},
        conflict=conflict,
        room=room,
    )


def test_trace_headers_go_on_a_new_dict_when_they_fit() -> None:
    event = _event(room=1000)
    (message,) = outbound([event], [TRACE])
    assert message.headers == {wire.MSG_ID: "e-1", **TRACE}
    assert event.headers == {wire.MSG_ID: "e-1"}  # the validated headers are not changed


def test_trace_headers_that_do_not_fit_are_left_out() -> None:
    needed = wire.encoded_headers_size(TRACE) - wire.EMPTY_HEADERS_SIZE
    fits, tight = _event(room=needed), _event(room=needed - 1)
    assert outbound([fits, tight], [TRACE, TRACE])[0].headers == {**fits.headers, **TRACE}
    assert outbound([tight], [TRACE])[0].headers == {wire.MSG_ID: "e-1"}


def test_without_trace_headers_messages_carry_the_validated_headers() -> None:
    (message,) = outbound([_event(room=0)], None)
    assert message.headers == {wire.MSG_ID: "e-1"}


def test_atomic_batch_header_reserve_covers_every_batch_position() -> None:
    batch_id = wire.new_batch_id()
    assert len(batch_id) == wire.BATCH_ID_LENGTH
    largest = max(
        wire.encoded_headers_size(wire.batch_headers(batch_id, seq, commit=True))
        for seq in (1, 9, 10, 999, wire.MAX_ATOMIC_BATCH_ENTRIES)
    )
    assert largest - wire.EMPTY_HEADERS_SIZE <= wire.ATOMIC_BATCH_HEADERS_SIZE


@pytest.mark.parametrize(
    ("seconds", "nanos", "ok"),
    [
        (wire.MIN_TTL_SECONDS, 0, True),
        (wire.MAX_TTL_SECONDS, 0, True),
        (wire.MAX_TTL_SECONDS + 1, 0, False),
        (0, 0, False),
        (60, 1, False),
    ],
)
def test_ttl_range(seconds: int, nanos: int, ok: bool) -> None:
    assert (wire.ttl_problem(seconds, nanos) is None) is ok


def test_the_ttl_maximum_stays_clear_of_nats_servers_overflow() -> None:
    # nats-server: expiry = now (ns since 1970) + ttl * 1e9, a signed 64-bit integer.
    year_2150_ns = 5_680_281_600 * 10**9
    assert year_2150_ns + wire.MAX_TTL_SECONDS * 10**9 < 2**63


@pytest.mark.parametrize("value", [" a", "a ", "a\tb\n", "a\r"])
def test_header_values_and_source_share_one_rule(value: str) -> None:
    assert wire.header_value_problem("source", value) is not None
    assert wire.header_problem("x-a", value) is not None


def test_atomic_batch_problems_name_the_clashing_entries() -> None:
    events = [
        _event(1, event_id="same", expected_last_subject_sequence=0),
        _event(1, subject="orders.OrderPlaced.o-2", event_id="e-2"),
        _event(1, event_id="same", expected_last_subject_sequence=0),
        _event(1, subject="orders.OrderPlaced.o-3", event_id="e-4", expected_last_sequence=0),
    ]
    problems = atomic_batch_problems(events)
    assert sorted(problems) == [0, 2, 3]
    assert [f for f, _ in problems[0]] == ["entries[0].event.id"]
    assert [f for f, _ in problems[2]] == [
        "entries[2].event.id",
        "entries[2].precondition.expected_last_subject_sequence",
    ]
    assert [f for f, _ in problems[3]] == ["entries[3].precondition.expected_last_sequence"]
    assert atomic_batch_problems(events[1:2]) == {}
