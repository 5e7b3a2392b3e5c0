"""`jetgate publish` (a real process) against a gateway serving TLS, mTLS, tokens and a
policy: the token comes from a file or a variable, never a flag; refusals exit 3."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf import json_format
from nats.aio.client import Client

from gateway.config import GatewayConfig
from gateway.server import Gateway
from jetgate import wire
from jetgate.client.connection import TOKEN_VARIABLE
from jetgate.examples.orders.v1 import orders_pb2
from tests.integration.conftest import order_placed, serving
from tests.integration.secure import API_TOKEN, SPIFFE_ID, TOKEN_NAME, SecureFiles
from tests.integration.test_publish_cli import JETGATE, REPO

PLACED = json_format.MessageToJson(order_placed("o-42"), indent=None)
PAID = json_format.MessageToJson(orders_pb2.OrderPaid(order_id="o-42"), indent=None)


@pytest.fixture
def files(tmp_path: Path) -> SecureFiles:
    return SecureFiles.make(tmp_path)


@pytest.fixture
async def secured(files: SecureFiles, gateway_config: GatewayConfig) -> AsyncIterator[Gateway]:
    async with serving(files.config(gateway_config)) as gateway:
        yield gateway


async def publish(
    *args: str, env: dict[str, str] | None = None, stdin: bytes = b""
) -> tuple[int, str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JETGATE_")}
    process = await asyncio.create_subprocess_exec(
        *(JETGATE, "publish", *args, "--config", str(REPO / "jetgate.toml")),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**clean, **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def principal(nc: Client, sequence: int) -> str:
    message = await nc.jetstream().get_msg("ORDERS", sequence)
    return str((message.headers or {})[wire.PRINCIPAL])


async def test_a_token_from_the_variable_over_tls(
    secured: Gateway, files: SecureFiles, nc: Client
) -> None:
    code, out, err = await publish(
        *("OrderPlaced", "--key", "o-42", "--json", PLACED),
        *("--gateway", secured.address, "--tls-ca", str(files.dir / "ca.pem")),
        env={TOKEN_VARIABLE: API_TOKEN},
    )
    assert code == 0, err
    row = json.loads(out)
    assert await principal(nc, row["sequence"]) == TOKEN_NAME


async def test_a_token_file_on_the_stream_form_and_a_denied_line(
    secured: Gateway, files: SecureFiles, nc: Client, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text(API_TOKEN + "\n")
    lines = [
        {"type": "OrderPlaced", "key": "o-1", "payload": json.loads(PLACED)},
        {"type": "OrderPaid", "key": "o-2", "payload": json.loads(PAID)},
    ]
    code, out, err = await publish(
        *("--gateway", secured.address, "--tls-ca", str(files.dir / "ca.pem")),
        *("--token-file", str(tmp_path / "token")),
        stdin="".join(json.dumps(line) + "\n" for line in lines).encode(),
    )
    assert code == 3, err
    stored, denied = (json.loads(line) for line in out.splitlines())
    assert await principal(nc, stored["sequence"]) == TOKEN_NAME
    assert (denied["line"], denied["error"]["code"]) == (2, "PERMISSION_DENIED")
    assert API_TOKEN not in out + err


async def test_no_token_or_a_wrong_one_is_refused_with_exit_3(
    secured: Gateway, files: SecureFiles, nc: Client
) -> None:
    base = ("OrderPlaced", "--key", "o-42", "--json", PLACED)
    tls = ("--gateway", secured.address, "--tls-ca", str(files.dir / "ca.pem"))
    for env in ({}, {TOKEN_VARIABLE: "jg_wrong"}):
        code, out, err = await publish(*base, *tls, env=env)
        assert out == ""
        assert code == 3, err
        assert err.startswith("jetgate publish: UNAUTHENTICATED"), err
        assert "jg_wrong" not in err
    info = await nc.jetstream().stream_info("ORDERS")
    assert info.state.messages == 0


async def test_a_token_is_never_a_flag_nor_sent_in_plaintext_off_loopback() -> None:
    one = ("OrderPlaced", "--key", "o-42", "--json", PLACED)
    code, _, err = await publish(*one, "--gateway", "127.0.0.1:1", "--token", API_TOKEN)
    assert code == 2, err
    code, _, err = await publish(
        *one, "--gateway", "10.0.0.7:50051", env={TOKEN_VARIABLE: API_TOKEN}
    )
    assert code == 2, err
    assert "plaintext" in err
    assert API_TOKEN not in err


async def test_mtls_with_a_client_certificate(
    files: SecureFiles, gateway_config: GatewayConfig, nc: Client
) -> None:
    d = files.dir
    async with serving(files.config(gateway_config, mutual=True)) as gateway:
        code, out, err = await publish(
            *("OrderPaid", "--key", "o-42", "--json", PAID, "--gateway", gateway.address),
            *("--tls-ca", str(d / "ca.pem"), "--tls-cert", str(d / "client.pem")),
            *("--tls-key", str(d / "client.key")),
        )
        assert code == 0, err
        assert await principal(nc, json.loads(out)["sequence"]) == SPIFFE_ID
        # Without the certificate the handshake fails: the gateway unreachable, exit 1.
        code, _, err = await publish(
            *("OrderPaid", "--key", "o-42", "--json", PAID, "--gateway", gateway.address),
            *("--tls-ca", str(d / "ca.pem"), "--timeout", "5"),
        )
        assert code == 1, err
