"""gRPC error statuses of the gateway, with `google.rpc.Status` details.

Bad input is INVALID_ARGUMENT with a `google.rpc.BadRequest` naming each field; a violated
precondition is FAILED_PRECONDITION with a `jetgate.v1.SequenceConflict` (expected and
actual) plus a standard `google.rpc.PreconditionFailure`; a full stream or storage is
RESOURCE_EXHAUSTED (nothing stored; retrying helps only once space is freed); an
unacknowledged publish is UNAVAILABLE or DEADLINE_EXCEEDED, both safe to retry with the
same event id.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from gateway.publisher import PublishFailure
from jetgate import wire
from jetgate.v1 import event_pb2

# JetStream API error codes are named in jetgate.wire (the server's protocol, which the
# consumers side needs too); here is only how the gateway maps them.
PRECONDITION_ERRORS = frozenset(
    {wire.JS_WRONG_LAST_MSG_ID, wire.JS_WRONG_LAST_SEQUENCE, wire.JS_WRONG_LAST_SEQUENCE_CONSTANT}
)
_STREAM_LIMITS = frozenset(
    {wire.JS_MAXIMUM_STREAMS, wire.JS_MEMORY_RESOURCES, wire.JS_STREAM_STORE_FAILED}
)
# Refusals of the message itself (validation should have caught them first).
_BAD_MESSAGE = frozenset(
    {
        wire.JS_MESSAGE_EXCEEDS_MAXIMUM,
        wire.JS_HEADER_EXCEEDS_MAXIMUM,
        wire.JS_MESSAGE_TTL_DISABLED,
        wire.JS_MESSAGE_TTL_INVALID,
        wire.JS_ATOMIC_UNSUPPORTED_HEADER,
    }
)
_ACTUAL = re.compile(r":\s*(.*)$")

FieldViolation = tuple[str, str]
# Where gRPC carries a google.rpc.Status (what grpc_status.rpc_status.to_status writes).
DETAILS_TRAILER = "grpc-status-details-bin"
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class RpcAbort(Exception):
    """Ends an RPC with `status` (raised inside servicers, turned into an abort at the top)."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


def make_status(code: grpc.StatusCode, message: str, *details: Message) -> status_pb2.Status:
    """A google.rpc.Status with `details` packed into Any."""
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    return status_pb2.Status(code=code.value[0], message=message, details=packed)


def bad_request(violations: Sequence[FieldViolation]) -> status_pb2.Status:
    """INVALID_ARGUMENT naming every offending field."""
    detail = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
            for f, d in violations
        ]
    )
    message = "; ".join(f"{f}: {d}" for f, d in violations)
    return make_status(grpc.StatusCode.INVALID_ARGUMENT, message, detail)


def aborted(reason: str) -> status_pb2.Status:
    return make_status(grpc.StatusCode.ABORTED, reason)


async def abort(
    context: grpc.aio.ServicerContext[object, object], status: status_pb2.Status
) -> NoReturn:
    """End the RPC with `status`, details in the `grpc-status-details-bin` trailer."""
    await context.abort(
        _CODES[status.code],
        status.message,
        trailing_metadata=((DETAILS_TRAILER, status.SerializeToString()),),
    )


def failure_status(
    failure: PublishFailure, conflict: event_pb2.SequenceConflict | None
) -> status_pb2.Status:
    """The status of a publish JetStream did not acknowledge.

    `conflict` describes the precondition the publish carried (None: it had none); it is
    completed with the actual value from JetStream's error when the error is a sequence or
    event-id mismatch.
    """
    if failure.kind == "timeout":
        return make_status(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"{failure.description}; the event may be stored: retry with the same event id",
        )
    if failure.kind == "denied":
        return make_status(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{failure.description}; not stored (the gateway's NATS permissions)",
        )
    if failure.kind == "unavailable":
        return make_status(
            grpc.StatusCode.UNAVAILABLE,
            f"{failure.description}; not acknowledged: retry with the same event id",
        )
    err = failure.err_code
    text = f"JetStream refused the event: {failure.description} (err_code {err})"
    if err in PRECONDITION_ERRORS:
        detail = event_pb2.SequenceConflict()
        if conflict is not None:
            detail.CopyFrom(conflict)
        actual = _ACTUAL.search(failure.description)
        if actual and actual.group(1):
            if err == wire.JS_WRONG_LAST_MSG_ID:
                detail.actual_event_id = actual.group(1)
            elif actual.group(1).isdigit():
                detail.actual_sequence = int(actual.group(1))
        standard = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=detail.condition or "SEQUENCE",
                    subject=detail.subject,
                    description=failure.description,
                )
            ]
        )
        return make_status(grpc.StatusCode.FAILED_PRECONDITION, text, detail, standard)
    if err == wire.JS_ATOMIC_DUPLICATE_MSG_ID:
        return make_status(
            grpc.StatusCode.ALREADY_EXISTS,
            f"{text}: an event id of this atomic batch is already stored (an earlier attempt "
            "committed?); nothing was stored now",
        )
    if err == wire.JS_INSUFFICIENT_RESOURCES:
        # A 503 that a retry does not cure: the storage limit stays reached until an
        # operator frees or adds space.
        return make_status(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{text}: JetStream's storage limit is reached; nothing was stored",
        )
    if err in _STREAM_LIMITS or failure.code == 429:
        return make_status(grpc.StatusCode.RESOURCE_EXHAUSTED, text)
    if err in _BAD_MESSAGE:
        return make_status(grpc.StatusCode.INVALID_ARGUMENT, text)
    if failure.code >= 500:
        return make_status(grpc.StatusCode.UNAVAILABLE, f"{text}; retry with the same event id")
    return make_status(grpc.StatusCode.FAILED_PRECONDITION, text)


def not_found(kind: str, name: str, description: str) -> status_pb2.Status:
    """NOT_FOUND for the `kind` named `name`, with a google.rpc.ResourceInfo."""
    info = error_details_pb2.ResourceInfo(
        resource_type=kind, resource_name=name, description=description
    )
    return make_status(grpc.StatusCode.NOT_FOUND, f"{kind} {name}: {description}", info)
