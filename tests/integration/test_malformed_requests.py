"""Request bytes that are not a valid message: INVALID_ARGUMENT, no internals, one log line.

They were UNKNOWN with Python class names in the message and an 8-line traceback in the
log per request, so any client could flood the log.
"""

from __future__ import annotations

import logging

import grpc
import pytest

from gateway.server import Gateway

# A field 1 (event) of length 100 with 2 bytes behind it: truncated, not a message.
GARBAGE = b"\x0a\x64\x01\x02"
METHODS = ("Publish", "PublishBatch")


def _identity(data: bytes) -> bytes:
    return data


def _gateway_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]


def _assert_refused(error: grpc.aio.AioRpcError) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    details = error.details() or ""
    assert "jetgate.v1." in details, details
    for internal in ("class", "Error", "Traceback", "google.protobuf", "'"):
        assert internal not in details, details


@pytest.mark.parametrize("method", METHODS)
async def test_unary_garbage_is_invalid_argument(
    gateway: Gateway, caplog: pytest.LogCaptureFixture, method: str
) -> None:
    caplog.set_level(logging.DEBUG)
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        call = channel.unary_unary(
            f"/jetgate.v1.EventGateway/{method}",
            request_serializer=_identity,
            response_deserializer=_identity,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(GARBAGE, timeout=10)
    _assert_refused(caught.value)
    lines = _gateway_lines(caplog)
    assert len(lines) <= 1, lines
    assert all("\n" not in line and len(line) < 300 for line in lines), lines


async def test_stream_garbage_is_invalid_argument(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        call = channel.stream_stream(
            "/jetgate.v1.EventGateway/PublishStream",
            request_serializer=_identity,
            response_deserializer=_identity,
        )(timeout=10)
        await call.write(GARBAGE)
        await call.done_writing()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
    _assert_refused(caught.value)
    lines = _gateway_lines(caplog)
    assert len(lines) <= 1, lines
    assert all("\n" not in line and len(line) < 300 for line in lines), lines
