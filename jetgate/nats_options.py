"""How every jetgate process connects to NATS: servers, credentials, TLS (one definition).

The gateway (gateway/connection.py), `jetgate consume` / `jetgate dlq` (consumers/cli.py),
`jetgate up`'s workers and the bench all connect through `NatsOptions` and `connect()`, so
they support the same ways nats-py does:
- several server URLs (`nats_url` is a comma-separated list, an array in TOML);
- user and password (`nats_user` + `nats_password` or `nats_password_file`), or a token
  (`nats_token` or `nats_token_file`), or an nkey seed file (`nats_nkey_seed_file`), or a
  `.creds` file (user JWT + nkey seed; `nats_creds_file`); credentials inside a URL
  (`nats://user:pass@host`) work as well;
- TLS: a CA to verify the server (`nats_tls_ca_file`), a client certificate and key
  (`nats_tls_cert_file`, `nats_tls_key_file`; mTLS), `nats_tls_handshake_first` (TLS before
  the server's INFO, for servers with `handshake_first`). A `tls://` URL or any TLS file
  turns TLS on; without a CA the system's trust store verifies the server.

It lives in `jetgate`, the ground layer, because the gateway and the consumers both need it
and neither may import the other's helpers (it is not telemetry, so not `observability`).

Secrets: a password or token comes from an environment variable (`JETGATE_NATS_PASSWORD`,
`JETGATE_NATS_TOKEN`) or a file (the `*_FILE` settings), never from a command-line flag
(any local user can read command lines with `ps`). `repr()` hides them; files are read when
connecting, so a rotated file is picked up by the next connection. Error messages name
the setting and the file, never a secret's value; URLs go through `jetgate.urls.redact`.
`to_env()` hands the settings to a child process in its environment (`jetgate up`'s
workers), not on its command line.

Refusals fail fast: an initial connection the server refuses (wrong credentials: nats-py
reports "Authorization Violation" and, left alone, retries for ever) or whose TLS handshake
fails raises `NatsRefused` (a `StartupError`: exit code 1) naming the cause at once, not
after the connect timeout. Permission violations (the user may not publish or subscribe
on a subject) do not close the connection: nats-py only reports them to `error_cb`;
`permission_violation()` recognises them so that callers can fail what waits on them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from nats.aio.client import Client as NATS
from nats.errors import AuthorizationError
from nats.errors import Error as NatsError

from jetgate.errors import ConfigurationError, StartupError
from jetgate.urls import redact

DEFAULT_URL: Final = "nats://127.0.0.1:4222"
ENV_PREFIX: Final = "JETGATE_"
URL_ENV: Final = "JETGATE_NATS_URL"
# Settings whose values are secrets: from the environment or a file, never a flag.
SECRET_SETTINGS: Final = frozenset({"nats_password", "nats_token"})
_VIOLATION = re.compile(r"permissions violation for (\w+) (?:to|on) \"?([^\"'\s]+)", re.I)

ErrorCallback = Callable[[Exception], Awaitable[None]]


class NatsRefused(StartupError):
    """NATS refused this process: wrong or missing credentials, a failed TLS handshake, or a
    permission the process needs (exit code 1). The message names the cause, not a secret."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsOptions:
    """Where and how to connect to NATS. Field `x` is setting `nats_x` (`JETGATE_NATS_X`);
    `servers` is `nats_url`."""

    servers: tuple[str, ...] = (DEFAULT_URL,)
    user: str = ""
    password: str = field(default="", repr=False)
    password_file: str = ""
    token: str = field(default="", repr=False)
    token_file: str = ""
    nkey_seed_file: str = ""
    creds_file: str = ""
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_handshake_first: bool = False

    def __post_init__(self) -> None:
        if self.password and self.password_file:
            raise ConfigurationError("set nats_password or nats_password_file, not both")
        if self.token and self.token_file:
            raise ConfigurationError("set nats_token or nats_token_file, not both")
        if (self.password or self.password_file) and not self.user:
            raise ConfigurationError("a NATS password needs nats_user")
        methods = [
            name
            for name, used in (
                ("nats_user", self.user),
                ("nats_token", self.token or self.token_file),
                ("nats_nkey_seed_file", self.nkey_seed_file),
                ("nats_creds_file", self.creds_file),
            )
            if used
        ]
        if len(methods) > 1:
            raise ConfigurationError(
                f"NATS authentication: choose one of {', '.join(methods)} (nats-py sends one)"
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigurationError("nats_tls_cert_file and nats_tls_key_file go together")

    @property
    def url(self) -> str:
        """The server URLs as one comma-separated string (may hold credentials: redact it)."""
        return ",".join(self.servers)

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS (a `tls://` URL or any TLS setting)."""
        return bool(
            self.tls_ca_file
            or self.tls_cert_file
            or self.tls_handshake_first
            or any(s.startswith("tls://") for s in self.servers)
        )

    def describe(self) -> str:
        """What a log line or banner may say: URLs redacted, the auth method, TLS or not."""
        auth = next(
            (
                name
                for name, used in (
                    ("user/password", self.user),
                    ("token", self.token or self.token_file),
                    ("nkey", self.nkey_seed_file),
                    ("creds", self.creds_file),
                )
                if used
            ),
            "",
        )
        extras = [f"auth: {auth}"] if auth else []
        if self.tls:
            extras.append("mTLS" if self.tls_cert_file else "TLS")
        return redact(self.url) + (f" ({', '.join(extras)})" if extras else "")


# The NatsOptions field of each setting (`nats_url` is `servers`).
SETTINGS: Final = {"nats_url": "servers"} | {
    f"nats_{f.name}": f.name for f in dataclasses.fields(NatsOptions) if f.name != "servers"
}

# What each setting means (the help of `jetgate serve|up|consume|dlq`'s flags).
HELP: Final = {
    "nats_url": "NATS server URL(s), comma-separated, credentials allowed (never printed)",
    "nats_user": "NATS user name (with nats_password or nats_password_file)",
    "nats_password": "NATS password: only from JETGATE_NATS_PASSWORD or the file (no flag)",
    "nats_password_file": "file holding the NATS password",
    "nats_token": "NATS token: only from JETGATE_NATS_TOKEN or the file (no flag)",
    "nats_token_file": "file holding the NATS token",
    "nats_nkey_seed_file": "NATS nkey user seed file (SU...)",
    "nats_creds_file": "NATS .creds file (user JWT and nkey seed)",
    "nats_tls_ca_file": "CA certificate(s) verifying the NATS server (TLS on; default: system CAs)",
    "nats_tls_cert_file": "client certificate for NATS mTLS (with nats_tls_key_file)",
    "nats_tls_key_file": "client key for NATS mTLS",
    "nats_tls_handshake_first": "TLS before the NATS server's INFO (servers with "
    "handshake_first): true|false",
}


def add_flags(parser: argparse.ArgumentParser, *, url_default: str, else_: str = "") -> None:
    """Add `--nats-url` and the other non-secret `--nats-*` flags to `parser` (secrets come
    from variables and files only: a flag's value shows in `ps`). `url_default` says where
    the URL comes from without the flag; `else_` is appended to the other flags' default
    (their JETGATE_* variable), e.g. ", else the config's"."""
    parser.add_argument(
        "--nats-url",
        dest="nats_url",
        default=None,
        metavar="URL",
        help=f"{HELP['nats_url']} [default: {url_default}]",
    )
    for setting, text in HELP.items():
        if setting in SECRET_SETTINGS or setting == "nats_url":
            continue
        parser.add_argument(
            f"--{setting.replace('_', '-')}",
            dest=setting,
            default=None,
            metavar="VALUE",
            help=f"{text} [default: {ENV_PREFIX}{setting.upper()}{else_}]",
        )


def split_servers(value: str | Sequence[str]) -> tuple[str, ...]:
    """Server URLs from a comma-separated string or a list (TOML array)."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(s.strip() for s in items if s.strip())


def options(values: Mapping[str, object]) -> NatsOptions:
    """NatsOptions from settings named `nats_*` (as in GatewayConfig); others are ignored."""
    given: dict[str, Any] = {}
    for setting, name in SETTINGS.items():
        value = values.get(setting)
        if value in (None, ""):
            continue
        if name == "servers":
            given[name] = split_servers(value)  # type: ignore[arg-type]
        elif name == "tls_handshake_first":
            given[name] = _boolean(setting, value)
        else:
            given[name] = str(value)
    return NatsOptions(**given)


def from_env(env: Mapping[str, str], *, url: str | None = None) -> NatsOptions:
    """NatsOptions from `JETGATE_NATS_*` variables; `url` (e.g. a flag) beats JETGATE_NATS_URL."""
    values: dict[str, object] = {s: env.get(ENV_PREFIX + s.upper()) for s in SETTINGS}
    if url:
        values["nats_url"] = url
    return options(values)


def to_env(opts: NatsOptions) -> dict[str, str]:
    """The `JETGATE_NATS_*` variables that make `from_env` return `opts` (for a child process:
    its environment is readable by its user only, its command line by everyone)."""
    env: dict[str, str] = {}
    for setting, name in SETTINGS.items():
        value = getattr(opts, name)
        if name == "servers":
            value = ",".join(value)
        elif isinstance(value, bool):
            value = "true" if value else ""
        if value:
            env[ENV_PREFIX + setting.upper()] = str(value)
    return env


def connect_kwargs(opts: NatsOptions) -> dict[str, Any]:
    """The keyword arguments of `nats.connect` for `opts` (reads secret files, builds TLS).

    Raises ConfigurationError naming the setting and file when a file cannot be used.
    """
    kwargs: dict[str, Any] = {"servers": list(opts.servers)}
    if opts.user:
        kwargs["user"] = opts.user
        password = opts.password or _read_secret("nats_password_file", opts.password_file)
        if password:
            kwargs["password"] = password
    if opts.token or opts.token_file:
        kwargs["token"] = opts.token or _read_secret("nats_token_file", opts.token_file)
    if opts.nkey_seed_file:
        _check_readable("nats_nkey_seed_file", opts.nkey_seed_file)
        kwargs["nkeys_seed"] = opts.nkey_seed_file
    if opts.creds_file:
        _check_readable("nats_creds_file", opts.creds_file)
        kwargs["user_credentials"] = opts.creds_file
    if opts.tls:
        kwargs["tls"] = tls_context(opts)
    if opts.tls_handshake_first:
        kwargs["tls_handshake_first"] = True
    return kwargs


def tls_context(opts: NatsOptions) -> ssl.SSLContext:
    """A client SSLContext verifying the server (against `tls_ca_file`, else the system's
    CAs), presenting the client certificate when one is set."""
    try:
        context = ssl.create_default_context(cafile=opts.tls_ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"nats_tls_ca_file {opts.tls_ca_file}: {_reason(exc)}") from None
    if opts.tls_cert_file:
        try:
            context.load_cert_chain(opts.tls_cert_file, opts.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"nats_tls_cert_file {opts.tls_cert_file} / nats_tls_key_file "
                f"{opts.tls_key_file}: {_reason(exc)}"
            ) from None
    return context


def permission_violation(exc: BaseException) -> tuple[str, str] | None:
    """(operation, subject) when `exc` reports a NATS permission violation, e.g.
    ("publish", "orders.orderplaced.o-1"); None for any other error. nats-py lowers the
    case of the server's message: the subject comes in lower case."""
    match = _VIOLATION.search(str(exc))
    return (match.group(1).lower(), match.group(2)) if match else None


def refusal(exc: BaseException) -> str:
    """Why NATS refused a connection when `exc` says so (credentials, TLS), else ''."""
    if isinstance(exc, AuthorizationError) or "authorization violation" in str(exc).lower():
        return "NATS refused the credentials (authorization violation)"
    if "authentication" in str(exc).lower():  # e.g. 'Authentication Timeout', '... Revoked'
        return f"NATS refused the credentials ({redact(str(exc))})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with NATS failed ({_reason(exc)})"
    return ""


async def connect(
    nc: NATS,
    opts: NatsOptions,
    *,
    within: float,
    error_cb: ErrorCallback | None = None,
    **kwargs: Any,
) -> None:
    """`nc.connect` with `opts` and `kwargs`, within `within` s.

    Raises NatsRefused at once when the server refuses the credentials or the TLS
    handshake fails, TimeoutError when no server answered in time (the message of
    ConnectionError-like failures names the last error, never a secret).
    """
    refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    last: list[BaseException] = []

    async def on_error(exc: Exception) -> None:
        last[:] = [exc]
        if not refused.done() and (why := refusal(exc)):
            refused.set_result(why)
        if error_cb is not None:
            await error_cb(exc)

    connecting: asyncio.Future[Any] = asyncio.ensure_future(
        nc.connect(**connect_kwargs(opts), error_cb=on_error, **kwargs)
    )
    try:
        done, _ = await asyncio.wait(
            {connecting, refused}, timeout=within, return_when=asyncio.FIRST_COMPLETED
        )
        if connecting in done:
            connecting.result()
            return
        connecting.cancel()
        with contextlib.suppress(BaseException):
            await connecting
        with contextlib.suppress(NatsError, asyncio.TimeoutError):
            await nc.close()
        if refused.done():
            raise NatsRefused(f"{refused.result()} at {redact(opts.url)}")
        cause = f" (last error: {redact(repr(last[0]))})" if last else ""
        raise TimeoutError(f"cannot reach NATS at {redact(opts.url)} within {within:g}s{cause}")
    finally:
        refused.cancel()


def _boolean(setting: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in {"true", "false", "1", "0", "yes", "no", ""}:
        raise ConfigurationError(f"{setting}: not a boolean: {value!r}")
    return text in {"true", "1", "yes"}


def _read_secret(setting: str, path: str) -> str:
    if not path:
        return ""
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigurationError(f"{setting} {path}: {exc.strerror or exc}") from None


def _check_readable(setting: str, path: str) -> None:
    if not os.access(path, os.R_OK) or not Path(path).is_file():
        raise ConfigurationError(f"{setting} {path}: not a readable file")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(getattr(exc, "verify_message", "") or exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
