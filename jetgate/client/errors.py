"""Typed errors of `jetgate.client`: a refused or unacknowledged publish, with its details.

Every error carries the gRPC code, the message and the decoded `google.rpc.Status`
details: field violations (`google.rpc.BadRequest`) and the sequence conflict
(`jetgate.v1.SequenceConflict`: expected and actual). `retryable` follows docs/clients.md:
UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED may succeed when sent again with the
same event id (the client itself retries those its RetrySettings name); nothing else does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

import grpc
from google.rpc import error_details_pb2, status_pb2

from jetgate.v1 import event_pb2

RETRYABLE_CODES: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
_CODES: Final = {code.value[0]: code for code in grpc.StatusCode}
DETAILS_TRAILER: Final = "grpc-status-details-bin"
# Field paths of a batch entry start with its position in the request message, which the
# caller never saw: `entries[3].event.key` is reported as `event.key`.
_ENTRY = re.compile(r"\bentries\[\d+\]\.")


class PublishError(Exception):
    """A publish that was not acknowledged as stored. Subclasses name the gRPC code."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, status: status_pb2.Status, *, event_id: str, attempts: int = 1) -> None:
        self.code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
        super().__init__(f"{self.code.name}: {_ENTRY.sub('', status.message)}")
        self.message = _ENTRY.sub("", status.message)
        self.status = status
        self.event_id = event_id
        self.attempts = attempts
        violations: dict[str, str] = {}
        self.conflict: event_pb2.SequenceConflict | None = None
        for detail in status.details:
            bad = error_details_pb2.BadRequest()
            conflict = event_pb2.SequenceConflict()
            if detail.Is(bad.DESCRIPTOR) and detail.Unpack(bad):
                violations.update(
                    {_ENTRY.sub("", v.field): v.description for v in bad.field_violations}
                )
            elif detail.Is(conflict.DESCRIPTOR) and detail.Unpack(conflict):
                self.conflict = conflict
        # Field path -> description (e.g. `event.key` -> `key is required`).
        self.field_violations: Mapping[str, str] = MappingProxyType(violations)

    @property
    def retryable(self) -> bool:
        """Whether sending the same event (same id) again may succeed (docs/clients.md)."""
        return self.code in RETRYABLE_CODES


class InvalidEvent(PublishError):
    """INVALID_ARGUMENT: the event is malformed (see `field_violations`); nothing stored."""


class PreconditionFailed(PublishError):
    """FAILED_PRECONDITION: the precondition did not hold (see `conflict`); nothing stored."""


class Unavailable(PublishError):
    """UNAVAILABLE: not acknowledged (it may be stored); the same id makes a retry safe."""


class DeadlineExceeded(PublishError):
    """DEADLINE_EXCEEDED: not acknowledged in time (it may be stored); retry with the same id."""


class ResourceExhausted(PublishError):
    """RESOURCE_EXHAUSTED: the gateway's budget or a stream or storage limit; nothing stored."""


class PermissionDenied(PublishError):
    """PERMISSION_DENIED or UNAUTHENTICATED: the caller may not publish this event."""


_BY_CODE: Final[Mapping[grpc.StatusCode, type[PublishError]]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidEvent,
    grpc.StatusCode.FAILED_PRECONDITION: PreconditionFailed,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: PermissionDenied,
}


def publish_error(status: status_pb2.Status, *, event_id: str, attempts: int = 1) -> PublishError:
    """The typed error of `status` (the class named after its code, else PublishError)."""
    kind = _BY_CODE.get(_CODES.get(status.code, grpc.StatusCode.UNKNOWN), PublishError)
    return kind(status, event_id=event_id, attempts=attempts)


def status_of(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc.Status of a failed call: from its details trailer, else code + text."""
    for key, value in error.trailing_metadata() or ():
        if key == DETAILS_TRAILER and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a garbled trailer: fall back to the code
                break
    return status_pb2.Status(code=error.code().value[0], message=error.details() or "")


def make_status(code: grpc.StatusCode, message: str) -> status_pb2.Status:
    return status_pb2.Status(code=code.value[0], message=message)
