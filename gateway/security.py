"""The gRPC listener's security as configured: credentials, authentication, the policy.

`ListenerSecurity` is made once at start-up from `[gateway.tls]`/`[gateway.auth]` (reading
every file: one that cannot be used is a ConfigurationError, exit 2) and gives the server
its port (`add_port`: TLS/mTLS with `ReloadingServerCredentials`, else plaintext, which
`check_listener` allows only on loopback unless `insecure`), its interceptor and, per call,
a `Caller` the servicer asks before each event goes to NATS. `refresh()` (SIGHUP) re-reads
changed certificates, tokens, keys and the policy at once; they are also re-read when their
files change (checked before handshakes and, for tokens, keys and policy, at most every
`reload_interval` s on the call path).

Interceptor order (see `interceptors`): the tracing interceptor outermost, so a refused call
is still a server span with its status; then `RequestGuard`, because gRPC parses a request
(and the guard reserves its bytes in the in-flight budget) before any handler runs, and the
guard's handler is what gives the bytes back: an authentication refusal inside it releases
them at once; `AuthInterceptor` innermost, so the principal it sets is in the context of
the task that runs the servicer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
from google.rpc import status_pb2

from gateway.auth.authenticator import Authenticator
from gateway.auth.interceptor import AuthInterceptor, current_principal
from gateway.auth.policy import Action, PolicyHolder
from gateway.auth.principal import AuthError, Principal, Reason, permission_denied
from gateway.auth.tls import ReloadingServerCredentials
from gateway.config import GatewayConfig
from gateway.security_config import SecurityConfigError, check_listener


@dataclass(slots=True, kw_only=True)
class Caller:
    """Who makes one call, and what the policy lets it do (decisions kept per call)."""

    principal: Principal | None
    policy: PolicyHolder | None
    _decided: dict[str, status_pb2.Status | None] = field(default_factory=dict)

    @property
    def name(self) -> str | None:
        """The principal's name (stored as `Jetgate-Principal`); None without auth."""
        return None if self.principal is None else self.principal.name

    def publish_denial(self, event_type: str) -> status_pb2.Status | None:
        """PERMISSION_DENIED when the caller may not publish `event_type`; None if it may."""
        return self.denial(Action.PUBLISH, event_type)

    def denial(self, action: Action, resource: str) -> status_pb2.Status | None:
        """PERMISSION_DENIED when the caller may not do `action` on `resource` (an event
        type, group or stream; see gateway.auth.policy); None if it may or auth is off."""
        if self.policy is None:
            return None
        key = f"{action.value}:{resource}"
        if key in self._decided:
            return self._decided[key]
        denial: status_pb2.Status | None
        if self.principal is None:  # the interceptor lets no EventGateway call through so
            denial = AuthError(Reason.CREDENTIALS_MISSING, "this call needs credentials").status()
        elif self.policy.allows(self.principal, action, resource):
            denial = None
        else:
            denial = permission_denied(self.principal, action.value, resource)
        self._decided[key] = denial
        return denial


class ListenerSecurity:
    """TLS credentials, authenticator and policy of one gateway (see the module docstring)."""

    def __init__(self, config: GatewayConfig) -> None:
        check_listener(config.listen, config.tls, insecure=config.insecure)
        auth = config.auth.settings(config.tls)
        self.credentials: ReloadingServerCredentials | None = None
        self.authenticator: Authenticator | None = None
        self.policy: PolicyHolder | None = None
        try:
            tls = config.tls.settings()
            if tls is not None:
                self.credentials = ReloadingServerCredentials(
                    tls, min_interval=auth.reload_interval
                )
            if auth.enabled:
                if not config.auth.policy_file:
                    raise SecurityConfigError(
                        "auth is on but auth.policy_file is not set: every call would be "
                        "denied (default deny); write a policy granting what each principal "
                        "may publish"
                    )
                self.authenticator = Authenticator(auth)
                self.policy = PolicyHolder(
                    Path(config.auth.policy_file), min_interval=auth.reload_interval
                )
        except OSError as exc:
            raise SecurityConfigError(f"{exc.filename}: cannot be read ({exc.strerror})") from None
        except ValueError as exc:  # TlsError, TokenFileError, JwtKeyError, PolicyError
            if isinstance(exc, SecurityConfigError):
                raise
            raise SecurityConfigError(str(exc)) from None

    @property
    def authenticating(self) -> bool:
        """True when callers must authenticate (and the policy decides what they may do)."""
        return self.authenticator is not None

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """The authentication interceptor (none without auth): innermost, see above."""
        return [] if self.authenticator is None else [AuthInterceptor(self.authenticator)]

    def add_port(self, server: grpc.aio.Server, listen: str) -> int:
        """Listen on `listen` with TLS when configured; the port bound."""
        if self.credentials is None:
            return server.add_insecure_port(listen)
        return server.add_secure_port(listen, self.credentials.credentials())

    def caller(self) -> Caller:
        """The caller of the current call (set by the interceptor)."""
        return Caller(principal=current_principal.get(), policy=self.policy)

    def refresh(self) -> None:
        """Re-read every changed certificate, token, key and policy file now (SIGHUP)."""
        if self.credentials is not None:
            self.credentials.refresh()
        if self.authenticator is not None:
            self.authenticator.refresh()
        if self.policy is not None:
            self.policy.refresh()
