"""`jetgate decode` as a real process: JSON out, one-line errors and their exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import json_format

from gateway.decoding import Decoder, load_decoder
from gateway.terminal import UsageError
from jetgate.examples.orders.v1 import orders_pb2

REPO = Path(__file__).resolve().parents[2]
JETGATE = str(Path(sys.executable).parent / "jetgate")
CONFIG = str(REPO / "jetgate.toml")
PLACED = orders_pb2.OrderPlaced(
    order_id="o-42",
    customer_id="c-7",
    total=orders_pb2.Money(currency_code="EUR", units=19, nanos=980_000_000),
)


def _decode(*args: str, payload: bytes, cwd: Path = REPO) -> subprocess.CompletedProcess[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JETGATE_")}
    return subprocess.run(
        [JETGATE, "decode", *args],
        input=payload,
        capture_output=True,
        env=clean,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_decodes_by_subject_and_round_trips() -> None:
    done = _decode("--subject", "orders.OrderPlaced.o-42", payload=PLACED.SerializeToString())

    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    decoded = json_format.Parse(done.stdout, orders_pb2.OrderPlaced())
    assert decoded == PLACED
    assert json.loads(done.stdout)["total"]["currencyCode"] == "EUR"  # the JSON mapping


def test_decodes_by_simple_type_name_on_one_line() -> None:
    done = _decode(
        "--type", "OrderPlaced", "--config", CONFIG, "--compact", payload=PLACED.SerializeToString()
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.count(b"\n") == 1
    assert json_format.Parse(done.stdout, orders_pb2.OrderPlaced()) == PLACED


def test_undecodable_payload_exits_3_with_one_line_and_its_size() -> None:
    done = _decode("--subject", "orders.OrderPlaced.o-42", payload=b"\xff\xff\xff\xff")

    assert done.returncode == 3
    assert done.stdout == b""
    assert done.stderr.decode() == (
        "jetgate decode: payload of 4 bytes is not a valid jetgate.examples.orders.v1.OrderPlaced\n"
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--type", "NoSuchEvent"), "'NoSuchEvent' is not a registered event type"),
        (("--subject", "payments.OrderPlaced.o-1"), "no registered event type is stored on"),
        (("--subject", "orders"), "no registered event type is stored on"),
    ],
)
def test_unknown_type_exits_2_with_one_line(args: tuple[str, ...], says: str) -> None:
    done = _decode(*args, payload=PLACED.SerializeToString())

    assert done.returncode == 2
    (line,) = done.stderr.decode().splitlines()
    assert line.startswith("jetgate decode: ")
    assert says in line
    assert "route prefixes: orders" in line


def test_without_a_config_says_where_types_come_from(tmp_path: Path) -> None:
    done = _decode("--type", "OrderPlaced", payload=b"", cwd=tmp_path)

    assert done.returncode == 2
    (line,) = done.stderr.decode().splitlines()
    assert "no types are registered: pass --config FILE" in line


def test_unknown_fields_are_noted_on_stderr() -> None:
    newer = PLACED.SerializeToString() + b"\xa8\x06\x01"  # field 101 = 1 (varint)

    done = _decode("--subject", "orders.OrderPlaced.o-42", payload=newer)

    assert done.returncode == 0
    assert json_format.Parse(done.stdout, orders_pb2.OrderPlaced()) == PLACED
    assert b"3 of" in done.stderr
    assert b"does not know" in done.stderr


def test_a_dead_letter_subject_decodes_as_its_origin_type() -> None:
    decoder = load_decoder(REPO / "jetgate.toml")
    placed = "jetgate.examples.orders.v1.OrderPlaced"

    assert decoder.type_for_subject("dlq.billing.orders.OrderPlaced.o-1") == placed
    assert decoder.type_named(placed) == placed
    with pytest.raises(UsageError):
        decoder.type_for_subject("dlq.billing.orders.Nope.o-1")
    assert isinstance(decoder, Decoder)
