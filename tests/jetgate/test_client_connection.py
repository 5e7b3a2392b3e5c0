"""Pure logic of jetgate.client.connection: addresses, the token's metadata, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from jetgate.client import Client, ConnectionSettings, TlsSettings, token_file
from jetgate.client.connection import connection_of, is_loopback


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.9.9.9:1", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("unix:/run/jetgate.sock", True),
        ("10.0.0.7:50051", False),
        ("gw-1.internal:50051", False),
        ("[2001:db8::1]:50051", False),
        ("localhost.evil.example:1", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


async def test_the_token_is_asked_at_each_stream_sync_or_async(tmp_path: Path) -> None:
    tokens = iter(["one", "two"])
    settings = ConnectionSettings(addresses=("127.0.0.1:1",), token=lambda: next(tokens))
    assert await settings.metadata() == (("authorization", "Bearer one"),)
    assert await settings.metadata() == (("authorization", "Bearer two"),)

    async def fetched() -> str:
        return "jwt"

    settings = ConnectionSettings(addresses=("127.0.0.1:1",), token=fetched)
    assert await settings.metadata() == (("authorization", "Bearer jwt"),)
    (tmp_path / "token").write_text("from-file\n")
    settings = ConnectionSettings(addresses=("127.0.0.1:1",), token=token_file(tmp_path / "token"))
    assert await settings.metadata() == (("authorization", "Bearer from-file"),)
    (tmp_path / "token").write_text("rotated")
    assert await settings.metadata() == (("authorization", "Bearer rotated"),)
    assert await ConnectionSettings(addresses=("127.0.0.1:1",)).metadata() == ()


@pytest.mark.parametrize("token", ["", "  ", "a b\n"])
async def test_an_unusable_token_is_refused_not_sent(token: str) -> None:
    settings = ConnectionSettings(addresses=("127.0.0.1:1",), token=lambda: token)
    with pytest.raises(ValueError, match="no usable token"):
        await settings.metadata()


def test_settings_refuse_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ConnectionSettings(addresses=())
    with pytest.raises(ValueError, match="not one string"):
        ConnectionSettings(addresses="127.0.0.1:1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cert_file and key_file"):
        TlsSettings(cert_file="client.pem")
    with pytest.raises(ValueError, match="plaintext"):
        ConnectionSettings(addresses=("gw-1.internal:50051",), token="t")
    # With TLS the token may go anywhere.
    ConnectionSettings(addresses=("gw-1.internal:50051",), token="t", tls=TlsSettings())


def test_a_target_is_one_address_several_or_the_settings() -> None:
    assert connection_of("127.0.0.1:1").addresses == ("127.0.0.1:1",)
    assert connection_of(["a:1", "b:2"]).addresses == ("a:1", "b:2")
    settings = ConnectionSettings(addresses=("a:1",))
    assert connection_of(settings) is settings
    with pytest.raises(ValueError, match="either target or channel"):
        Client()
