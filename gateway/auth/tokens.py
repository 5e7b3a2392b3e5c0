"""Static API tokens: a TOML file of SHA-256 hashes, matched in constant time.

The file never holds a token, only its hash, so reading it (or a backup of it) gives no
credential away. Tokens are meant to be long random strings (`new_token()`: 256 bits), so an
unsalted SHA-256 is enough (a password hash would only slow every call down). A presented
token is hashed and compared with every entry by `hmac.compare_digest`, without stopping at
the first match, so the time taken says nothing about which entry matched or how close
a guess was.

Format (unknown keys are errors, names are unique)::

    # printf %s "$TOKEN" | sha256sum
    [[tokens]]
    name = "orders-service"        # the principal name
    sha256 = "9f86d081884c7d65..."  # 64 hex digits
    roles = ["order-writer"]       # optional
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.auth.principal import AuthMethod, Principal

_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEYS = frozenset({"name", "sha256", "roles"})


class TokenFileError(ValueError):
    """A token file that cannot be used (the message names the file and the entry)."""


def hash_token(token: str) -> str:
    """The hex SHA-256 of `token`, as written in the token file."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random API token (256 bits, URL-safe)."""
    return "jg_" + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenEntry:
    """One token of the file: its hash and the principal it stands for."""

    digest: bytes
    principal: Principal


class TokenStore:
    """The entries of a token file; `lookup` finds the principal of a presented token."""

    def __init__(self, entries: Sequence[TokenEntry]) -> None:
        self._entries = tuple(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, token: str) -> Principal | None:
        """The principal of `token`, or None (constant time in the entries)."""
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry.principal
        return found


def _strings(value: object, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise TokenFileError(f"{where}: roles must be a list of non-empty strings")
    return frozenset(value)


def parse_tokens(text: str, *, source: str = "<tokens>") -> TokenStore:
    """The store of a token file's text; raises TokenFileError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TokenFileError(f"{source}: not valid TOML ({exc})") from exc
    if set(data) - {"tokens"}:
        raise TokenFileError(f"{source}: unknown keys {sorted(set(data) - {'tokens'})}")
    raw = data.get("tokens", [])
    if not isinstance(raw, list):
        raise TokenFileError(f"{source}: tokens must be an array of tables ([[tokens]])")
    entries: list[TokenEntry] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        where = f"{source}: tokens[{i}]"
        if not isinstance(item, dict):
            raise TokenFileError(f"{where}: must be a table")
        if unknown := set(item) - _KEYS:
            raise TokenFileError(f"{where}: unknown keys {sorted(unknown)}")
        name, digest = item.get("name"), item.get("sha256")
        if not isinstance(name, str) or not name:
            raise TokenFileError(f"{where}: name must be a non-empty string")
        if name in names:
            raise TokenFileError(f"{where}: name {name!r} appears twice")
        names.add(name)
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest.lower()):
            raise TokenFileError(f"{where} ({name}): sha256 must be 64 hex digits")
        roles = _strings(item.get("roles", []), f"{where} ({name})")
        principal = Principal(name=name, roles=roles, method=AuthMethod.API_TOKEN)
        entries.append(TokenEntry(digest=bytes.fromhex(digest), principal=principal))
    return TokenStore(entries)


def load_tokens(path: Path) -> TokenStore:
    """The store of the token file at `path`; raises TokenFileError or OSError."""
    return parse_tokens(path.read_text(encoding="utf-8"), source=str(path))
