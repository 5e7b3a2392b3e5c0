"""Pure logic of jetgate.client: settings, backoff, error decoding."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from jetgate.client import BatchSettings, InvalidEvent, PublishError, RetrySettings, Unavailable
from jetgate.client.errors import publish_error


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
    ],
)
def test_codes_a_retry_cannot_cure_are_refused(code: grpc.StatusCode) -> None:
    with pytest.raises(ValueError, match=code.name):
        RetrySettings(codes=frozenset({grpc.StatusCode.UNAVAILABLE, code}))


def test_backoff_grows_to_its_bound_with_jitter_below_it() -> None:
    retry = RetrySettings(initial_backoff=0.1, multiplier=2.0, max_backoff=1.0)
    assert [retry.backoff(n, 0.0) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert retry.backoff(5, 0.999) == pytest.approx(0.5, abs=0.001)


def test_batches_stay_within_what_the_gateway_accepts() -> None:
    with pytest.raises(ValueError, match="max_events"):
        BatchSettings(max_events=1001)
    with pytest.raises(ValueError, match="max_in_flight"):
        BatchSettings(max_in_flight=0)


def test_an_error_names_the_callers_fields_not_the_batch_position() -> None:
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field="entries[12].event.key", description="key is required"
            )
        ]
    )
    detail = any_pb2.Any()
    detail.Pack(bad)
    status = status_pb2.Status(
        code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
        message="entries[12].event.key: key is required",
        details=[detail],
    )
    error = publish_error(status, event_id="e-1")
    assert isinstance(error, InvalidEvent)
    assert dict(error.field_violations) == {"event.key": "key is required"}
    assert error.message == "event.key: key is required"
    assert not error.retryable


def test_unacknowledged_is_retryable_and_unknown_codes_are_plain_errors() -> None:
    unavailable = publish_error(
        status_pb2.Status(code=grpc.StatusCode.UNAVAILABLE.value[0]), event_id="e"
    )
    assert isinstance(unavailable, Unavailable)
    assert unavailable.retryable
    odd = publish_error(status_pb2.Status(code=grpc.StatusCode.DATA_LOSS.value[0]), event_id="e")
    assert type(odd) is PublishError
    assert not odd.retryable
