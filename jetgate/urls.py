"""Credentials in URLs never reach output: `redact()` hides them wherever a URL is shown.

A NATS URL may carry a secret (`nats://TOKEN@host:4222`, `nats://user:PASSWORD@host`), and
jetgate shows URLs in its start-up banner, log lines, error messages and the hints it
prints. Every one of those goes through `redact()`, which works on any text (a URL, a
comma-separated URL list, an exception message quoting one):
- `scheme://user:password@host` -> `scheme://user:***@host` (a user name is no secret and
  helps to tell accounts apart);
- `scheme://token@host` -> `scheme://***@host` (a lone user part is a token to NATS).

It lives in `jetgate`, the ground layer, because both the gateway and the consumer
workers print URLs and neither may depend on the other's helpers; it is not telemetry, so
not `observability`. Workers of `jetgate up` get their NATS URL in the environment
(`JETGATE_NATS_URL`), not on a command line that any local user can read in `ps`.
"""

from __future__ import annotations

import re
from typing import Final

MASK: Final = "***"
# scheme://userinfo@ : userinfo runs up to the last '@' before the host part ends ('/',
# whitespace, a quote, a comma between URLs), so a raw '@' inside a password is covered.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/,'\"<>]*)@")


def redact(text: str) -> str:
    """`text` with the password or token of every URL in it replaced by `***`."""
    return _USERINFO.sub(_mask, text)


def _mask(match: re.Match[str]) -> str:
    user, colon, _ = match.group("userinfo").partition(":")
    hidden = f"{user}:{MASK}" if colon else MASK
    return f"{match.group('scheme')}{hidden}@"
