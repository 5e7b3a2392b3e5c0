"""Where and how `jetgate.client` connects: gateway addresses, TLS, a bearer token.

    ConnectionSettings(
        addresses=("gw-1.internal:50051", "gw-2.internal:50051"),
        tls=TlsSettings(ca_file="/etc/jetgate/ca.pem"),  # + cert_file/key_file for mTLS
        token=token_file("/run/secrets/jetgate-token"),  # or a str, or any callable
    )

Several addresses: one channel per address, not grpc's `ipv4:a,b` target with the
`round_robin` policy. A round-robin channel balances calls, and the client makes one
long-lived PublishStream call, so it would pin every event to one gateway until that stream
broke; it also takes IP literals only, with one TLS name for all. With a channel per address
the client decides: each stream it opens goes to the next address (skipping one whose
channel is in TRANSIENT_FAILURE while another is not), a broken stream's retries go out on
a stream to the next address, and a stream is retired after `stream_max_age` seconds so
the events spread over every gateway even when nothing breaks. Every address is verified
against its own certificate name.

The token: a `str`, or a callable returning one (sync or async), asked each time a stream
opens, so a JWT that expires is fetched again (the gateway checks the token when the call
starts; `stream_max_age` bounds how long one check serves). It goes as the stream's
`authorization: Bearer` metadata. A token is never sent in plaintext off loopback: without
TLS every address must be a loopback one (or `insecure=True`).
"""

from __future__ import annotations

import inspect
import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio

# Where command-line tools (`jetgate publish`) read a bearer token: never a flag's value.
TOKEN_VARIABLE = "JETGATE_GATEWAY_TOKEN"
TokenProvider = Callable[[], str | Awaitable[str]]
Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    """TLS to the gateway: `ca_file` (PEM; empty: the system's roots), and for mTLS
    `cert_file` (chain, leaf first) with `key_file`. `server_name` overrides the name the
    gateway's certificate is checked against (default: the address's host)."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("mTLS needs both cert_file and key_file")

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials (reads the files; OSError names a missing one)."""

        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionSettings:
    """The gateways a client publishes to and how (see the module docstring).

    `addresses`: `host:port` of each gateway (at least one). `tls`: None for plaintext.
    `token`: a bearer token or a provider of one. `stream_max_age`: seconds one PublishStream
    call carries new batches before the next opens (on the next address). `options`: extra
    grpc channel options.
    """

    addresses: tuple[str, ...]
    tls: TlsSettings | None = None
    token: str | TokenProvider | None = None
    stream_max_age: float = 30.0
    insecure: bool = False
    options: tuple[tuple[str, str | int], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.addresses, str):
            raise ValueError("addresses is a tuple of host:port strings, not one string")
        if not self.addresses or not all(self.addresses):
            raise ValueError("give at least one gateway address")
        if self.stream_max_age <= 0:
            raise ValueError("stream_max_age must be positive")
        if self.token is not None and self.tls is None and not self.insecure:
            remote = [a for a in self.addresses if not is_loopback(a)]
            if remote:
                raise ValueError(
                    f"a token would cross the network in plaintext to {remote[0]}: "
                    "set tls (or insecure=True behind a trusted proxy)"
                )

    def channel(self, address: str) -> grpc.aio.Channel:
        """A new channel to `address` (TLS when configured)."""
        options: list[tuple[str, str | int]] = list(self.options)
        if self.tls is None:
            return grpc.aio.insecure_channel(address, options=options)
        if self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return grpc.aio.secure_channel(address, self.tls.credentials(), options=options)

    async def metadata(self) -> Metadata:
        """The call metadata of a new stream: the bearer token, fetched now."""
        if self.token is None:
            return ()
        token = self.token if isinstance(self.token, str) else self.token()
        if inspect.isawaitable(token):
            token = await token
        if not isinstance(token, str) or not token or token != token.strip():
            raise ValueError("the token provider gave no usable token")
        return (("authorization", f"Bearer {token}"),)


def token_file(path: str | Path) -> Callable[[], str]:
    """A token provider reading `path` at each stream (a rotated file is used at once);
    surrounding whitespace is dropped."""
    where = Path(path)

    def read() -> str:
        return where.read_text().strip()

    return read


def is_loopback(address: str) -> bool:
    """Whether `host:port` (or `[v6]:port`, `unix:...`) names this machine only."""
    if address.startswith("unix:"):
        return True
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 else address
    if host.startswith("["):
        host = host[1 : host.find("]")]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def connection_of(target: str | Sequence[str] | ConnectionSettings) -> ConnectionSettings:
    """`target` as settings: one address, several, or the settings themselves."""
    if isinstance(target, ConnectionSettings):
        return target
    if isinstance(target, str):
        return ConnectionSettings(addresses=(target,))
    return ConnectionSettings(addresses=tuple(target))
