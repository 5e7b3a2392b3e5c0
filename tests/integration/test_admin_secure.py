"""Admin with TLS, tokens, JWTs and a policy: `admin` grants per stream and group decide
what each caller may see and do; types and schemas are open to any authenticated caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from nats.aio.client import Client

from consumers import ConsumerGroup, deadletter
from gateway.config import GatewayConfig
from gateway.server import Gateway
from jetgate.v1 import admin_pb2, admin_pb2_grpc
from tests.integration.conftest import serving
from tests.integration.secure import (
    API_TOKEN,
    PLACED,
    POLICY,
    TOKEN_NAME,
    SecureFiles,
    bearer,
    channel,
)

TOKEN = bearer(API_TOKEN)
# The orders service's token may administer stream ORDERS and group billing; the JWT role
# order-writer may publish only (the shared policy's grants).
ADMIN_POLICY = (
    POLICY
    + f"""
[[grants]]
principals = ["{TOKEN_NAME}"]
admin = ["ORDERS", "billing"]
"""
)


@pytest.fixture
def files(tmp_path: Path) -> SecureFiles:
    made = SecureFiles.make(tmp_path)
    (tmp_path / "policy.toml").write_text(ADMIN_POLICY)
    return made


@pytest.fixture
async def secured(files: SecureFiles, gateway_config: GatewayConfig) -> AsyncIterator[Gateway]:
    async with serving(files.config(gateway_config)) as gateway:
        yield gateway


@pytest.fixture
async def admin(
    secured: Gateway, files: SecureFiles
) -> AsyncIterator[admin_pb2_grpc.AdminAsyncStub]:
    async with channel(secured.address, files) as ch:
        yield admin_pb2_grpc.AdminStub(ch)


async def denied(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call  # type: ignore[misc]
    return refused.value.code()


async def test_an_admin_sees_and_does_only_what_it_is_granted(
    admin: admin_pb2_grpc.AdminAsyncStub, nc: Client
) -> None:
    js = nc.jetstream()
    for name in ("billing", "other"):
        await js.add_consumer("ORDERS", ConsumerGroup(name, stream="ORDERS").consumer_config())
    await deadletter.ensure_stream(js)

    streams = await admin.ListStreams(admin_pb2.ListStreamsRequest(), metadata=TOKEN, timeout=20)
    assert [s.name for s in streams.streams] == ["ORDERS"]  # not DLQ
    groups = await admin.ListGroups(admin_pb2.ListGroupsRequest(), metadata=TOKEN, timeout=20)
    assert [g.name for g in groups.groups] == ["billing"]  # not other (nor declared audit)
    got = await admin.GetGroup(admin_pb2.GetGroupRequest(group="billing"), metadata=TOKEN)
    assert got.stream == "ORDERS"
    listed = admin_pb2.ListDeadLettersRequest(group="billing")
    assert (await admin.ListDeadLetters(listed, metadata=TOKEN, timeout=20)).total == 0

    # Denied before existence is looked at: "ghost" is no more found than "other".
    refusals = [
        admin.GetStream(admin_pb2.GetStreamRequest(stream="DLQ"), metadata=TOKEN),
        admin.GetStream(admin_pb2.GetStreamRequest(stream="NOPE"), metadata=TOKEN),
        admin.GetGroup(admin_pb2.GetGroupRequest(group="other"), metadata=TOKEN),
        admin.GetGroup(admin_pb2.GetGroupRequest(group="ghost"), metadata=TOKEN),
        admin.GetGroup(admin_pb2.GetGroupRequest(group="other", stream="NOPE"), metadata=TOKEN),
        admin.ListDeadLetters(admin_pb2.ListDeadLettersRequest(group="other"), metadata=TOKEN),
        admin.RedriveDeadLetters(
            admin_pb2.RedriveDeadLettersRequest(group="other"), metadata=TOKEN
        ),
        admin.PurgeDeadLetters(admin_pb2.PurgeDeadLettersRequest(group="other"), metadata=TOKEN),
    ]
    for call in refusals:
        assert await denied(call) == grpc.StatusCode.PERMISSION_DENIED


async def test_types_need_only_authentication(
    admin: admin_pb2_grpc.AdminAsyncStub, files: SecureFiles
) -> None:
    writer = bearer(files.jwt())  # may publish, administer nothing
    types = await admin.ListTypes(admin_pb2.ListTypesRequest(), metadata=writer, timeout=20)
    assert PLACED in {t.name for t in types.types}
    schema = admin_pb2.GetSchemaRequest(event_type=PLACED)
    assert (await admin.GetSchema(schema, metadata=writer, timeout=20)).file_descriptor_set.file
    nothing = await admin.ListStreams(admin_pb2.ListStreamsRequest(), metadata=writer, timeout=20)
    assert list(nothing.streams) == []
    stream = admin_pb2.GetStreamRequest(stream="ORDERS")
    assert await denied(admin.GetStream(stream, metadata=writer)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )

    # Without credentials: nothing at all.
    assert await denied(admin.ListTypes(admin_pb2.ListTypesRequest())) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert await denied(admin.ListStreams(admin_pb2.ListStreamsRequest())) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
