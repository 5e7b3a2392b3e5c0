"""`redact()`: credentials in URLs never reach output."""

from __future__ import annotations

import pytest

from jetgate.urls import redact


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("nats://s3cr3t@host:4222", "nats://***@host:4222"),
        ("nats://user:pa55@host", "nats://user:***@host"),
        ("nats://:pa55@host", "nats://:***@host"),
        ("tls://user:p@ss@host:4222/x", "tls://user:***@host:4222/x"),  # a raw '@' in it
        ("nats://a:1@h1:4222,nats://tok@h2:4222", "nats://a:***@h1:4222,nats://***@h2:4222"),
        (
            "cannot reach NATS at nats://tok@10.0.0.1:4222 within 10s",
            "cannot reach NATS at nats://***@10.0.0.1:4222 within 10s",
        ),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("mail me at a@b.c, see http://x/y@z", "mail me at a@b.c, see http://x/y@z"),
        ("", ""),
    ],
)
def test_redact(text: str, shown: str) -> None:
    assert redact(text) == shown
