"""Who is calling (`Principal`) and the statuses of a call that is not authenticated or allowed.

UNAUTHENTICATED and PERMISSION_DENIED carry a `google.rpc.ErrorInfo` (domain `jetgate`) whose
`reason` a client can switch on (refresh an expired token, fix its audience...). Messages are
fixed texts chosen here: no status ever echoes a token, a token's claims or a file's content.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

from gateway.errors import make_status

DOMAIN = "jetgate"


class AuthMethod(enum.StrEnum):
    """How a principal proved who it is."""

    MTLS = "mtls"
    API_TOKEN = "api-token"
    JWT = "jwt"


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """An authenticated caller: its name, its roles and how it authenticated."""

    name: str
    roles: frozenset[str] = frozenset()
    method: AuthMethod

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a principal needs a name")


class Reason(enum.StrEnum):
    """`ErrorInfo.reason` of an UNAUTHENTICATED call."""

    CREDENTIALS_MISSING = "CREDENTIALS_MISSING"
    CREDENTIALS_MALFORMED = "CREDENTIALS_MALFORMED"
    CERTIFICATE_IDENTITY_MISSING = "CERTIFICATE_IDENTITY_MISSING"
    TOKEN_INVALID = "TOKEN_INVALID"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    TOKEN_NOT_YET_VALID = "TOKEN_NOT_YET_VALID"
    TOKEN_SIGNATURE_INVALID = "TOKEN_SIGNATURE_INVALID"
    TOKEN_AUDIENCE_INVALID = "TOKEN_AUDIENCE_INVALID"
    TOKEN_ISSUER_INVALID = "TOKEN_ISSUER_INVALID"


# The reason of a PERMISSION_DENIED call.
ACTION_DENIED = "ACTION_DENIED"


class AuthError(Exception):
    """A call whose credentials are missing or not valid; `status()` is what it gets."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def status(self) -> status_pb2.Status:
        """UNAUTHENTICATED with an ErrorInfo naming the reason."""
        info = error_details_pb2.ErrorInfo(reason=self.reason.value, domain=DOMAIN)
        return make_status(grpc.StatusCode.UNAUTHENTICATED, self.message, info)


def permission_denied(principal: Principal, action: str, resource: str) -> status_pb2.Status:
    """PERMISSION_DENIED for `principal` doing `action` on `resource` (names, never secrets)."""
    info = error_details_pb2.ErrorInfo(
        reason=ACTION_DENIED,
        domain=DOMAIN,
        metadata={"principal": principal.name, "action": action, "resource": resource},
    )
    return make_status(
        grpc.StatusCode.PERMISSION_DENIED,
        f"{principal.name} may not {action} {resource}",
        info,
    )
