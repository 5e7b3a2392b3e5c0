"""One Admin call (`AdminCall`: connection, deadline, caller) and the checks and statuses
every Admin method shares (see gateway/admin.py for what they mean)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.rpc import status_pb2
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from gateway.auth.policy import Action
from gateway.errors import RpcAbort, bad_request, make_status
from gateway.security import Caller
from jetgate import wire
from jetgate.urls import redact

_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminCall:
    """One Admin call: its caller, and NATS as the call may use it (`timeout`: the longest
    wait for one JetStream answer, bounded by the call's deadline).

    The connection is asked for only when the call needs NATS, after its request was
    checked: bad input is INVALID_ARGUMENT even while NATS is away.
    """

    nats: Callable[[], NATS]
    timeout: float
    caller: Caller

    @property
    def nc(self) -> NATS:
        """The gateway's current connection; RpcAbort (UNAVAILABLE) while it is down."""
        nc = self.nats()
        if not nc.is_connected:
            raise RpcAbort(
                make_status(grpc.StatusCode.UNAVAILABLE, "NATS is unreachable; retry later")
            )
        return nc

    @property
    def js(self) -> JetStreamContext:
        """JetStream on `nc`, each request waiting `timeout` at most."""
        return self.nc.jetstream(timeout=self.timeout)

    def authorize(self, resource: str) -> None:
        """Raise RpcAbort (PERMISSION_DENIED) unless the caller may administer `resource`."""
        if (denial := self.caller.denial(Action.ADMIN, resource)) is not None:
            raise RpcAbort(denial)

    def may(self, resource: str) -> bool:
        """Whether the caller may administer `resource` (List* keep only those)."""
        return self.caller.denial(Action.ADMIN, resource) is None


def stream_name(name: str, field: str) -> str:
    if not name:
        raise RpcAbort(bad_request([(field, "must name a stream")]))
    if not _STREAM_NAME.fullmatch(name):
        raise RpcAbort(
            bad_request([(field, f"stream name {name!r} must be 1-64 of A-Z a-z 0-9 _ -")])
        )
    return name


def group_name(name: str) -> str:
    if not name:
        raise RpcAbort(bad_request([("group", "must name a consumer group")]))
    if (problem := wire.group_problem(name)) is not None:
        raise RpcAbort(bad_request([("group", problem)]))
    return name


def nats_status(exc: TimeoutError | NatsError) -> status_pb2.Status:
    """The status of a JetStream request that failed with `exc`."""
    if isinstance(exc, NotFoundError):  # deleted while the call ran
        return make_status(grpc.StatusCode.NOT_FOUND, f"JetStream: {exc.description}")
    if isinstance(exc, APIError) and (exc.code or 0) < 500:
        return make_status(
            grpc.StatusCode.FAILED_PRECONDITION, f"JetStream refused: {exc.description}"
        )
    text = redact(str(exc) or type(exc).__name__)
    return make_status(grpc.StatusCode.UNAVAILABLE, f"NATS did not answer ({text}); retry later")
