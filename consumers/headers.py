"""Stored headers as nats-py hands them over, made into plain `dict[str, str]`.

nats-py parses headers two ways. Messages (a worker's deliveries) come with `str` values
decoded as UTF-8. Stream messages read with `get_msg` (`jetgate dlq list`, redrive) go
through `email.parser.BytesParser`: an ASCII value is a `str`, but a value with any other
byte (`über ☃`, a source `srcé`, a non-ASCII Reject reason) is an `email.header.Header`
holding the raw bytes, which has no `strip()` (nats-py's publish calls it) and whose `str()`
is mangled. The gateway stores such values, so every reader of stored headers goes through
`text_headers`, and gets back what was published, byte for byte (UTF-8).
"""

from __future__ import annotations

from collections.abc import Mapping
from email.header import Header, decode_header

# A Header from BytesParser holds undecodable bytes under this pseudo charset.
_UNKNOWN_8BIT = "unknown-8bit"


def text_headers(headers: Mapping[str, object] | None) -> dict[str, str]:
    """A fresh `dict[str, str]` of `headers` (None: empty), every value as published."""
    return {name: text_value(value) for name, value in (headers or {}).items()}


def text_value(value: object) -> str:
    """One header value as text: `str` as it is, an `email.header.Header` decoded as UTF-8."""
    if isinstance(value, str):
        return value
    if isinstance(value, Header):
        parts = []
        for part, charset in decode_header(value):
            if isinstance(part, str):
                parts.append(part)
            else:
                codec = charset if charset and charset != _UNKNOWN_8BIT else "utf-8"
                try:
                    parts.append(part.decode(codec, "replace"))
                except LookupError:  # a charset Python does not know
                    parts.append(part.decode("utf-8", "replace"))
        return "".join(parts)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
