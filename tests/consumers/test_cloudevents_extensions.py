"""An event a CloudEvents SDK published straight into a stream (binary mode, protobuf
payload, no Nats-Msg-Id): handled by a consumer group with its extension attributes on
`Delivery`, kept by its dead letter and its redrive (issue 15)."""

from __future__ import annotations

from nats.aio.client import Client
from nats.js import JetStreamContext

from consumers import Delivery, Reject, Worker, deadletter
from jetgate.examples.orders.v1 import orders_pb2
from tests.consumers.conftest import group, run_until, store

PLACED = "jetgate.examples.orders.v1.OrderPlaced"


def sdk_headers(event_id: str) -> dict[str, str]:
    """The headers sdk-go's NATS JetStream binding writes for an event (binary mode)."""
    return {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "//go-sdk/orders",
        "ce-type": PLACED,
        "ce-time": "2026-11-30T06:50:01.123456789Z",
        "ce-dataschema": f"https://type.googleapis.com/{PLACED}",
        "content-type": "application/protobuf",
        "ce-tenant": "acme",
        "ce-region": "eu%20west",
    }


async def test_extension_attributes_reach_the_handler_read_only(
    nc: Client, js: JetStreamContext
) -> None:
    payload = orders_pb2.OrderPlaced(order_id="o-9").SerializeToString()
    await js.publish("orders.OrderPlaced.o-9", payload, headers=sdk_headers("sdk-1"))
    billing = group()
    seen: list[Delivery] = []

    @billing.handler(orders_pb2.OrderPlaced)
    async def record(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        seen.append(delivery)

    worker = Worker(billing, nc)
    await run_until(worker, lambda: len(seen) == 1)
    [delivery] = seen
    assert (delivery.event_id, delivery.key, delivery.source) == ("sdk-1", "o-9", "//go-sdk/orders")
    assert dict(delivery.extensions) == {"tenant": "acme", "region": "eu west"}
    assert delivery.headers == {}  # no user headers: ce-* are attributes
    try:
        delivery.extensions["tenant"] = "evil"  # type: ignore[index]
    except TypeError:
        pass
    else:
        raise AssertionError("Delivery.extensions is writable")


async def test_dead_letters_and_redrive_keep_extension_attributes(
    nc: Client, js: JetStreamContext
) -> None:
    payload = orders_pb2.OrderPlaced(order_id="o-9").SerializeToString()
    await js.publish("orders.OrderPlaced.o-9", payload, headers=sdk_headers("sdk-2"))
    billing = group()
    seen: list[Delivery] = []

    @billing.handler(orders_pb2.OrderPlaced)
    async def refuse_once(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        seen.append(delivery)
        if len(seen) == 1:
            raise Reject("not yet")

    worker = Worker(billing, nc)
    await run_until(worker, lambda: worker.stats.dead_lettered == 1)
    [dead] = [d async for d in deadletter.dead_letters(js, "billing")]
    assert dead.event_id == "sdk-2"
    assert dead.headers["ce-tenant"] == "acme"

    assert len(await deadletter.redrive(js, "billing")) == 1
    worker = Worker(billing, nc)
    await run_until(worker, lambda: len(seen) == 2)
    assert seen[1].event_id == "sdk-2"
    assert dict(seen[1].extensions) == {"tenant": "acme", "region": "eu west"}


async def test_gateway_events_have_no_extensions(nc: Client, js: JetStreamContext) -> None:
    await store(js, "o-1")
    billing = group()
    seen: list[Delivery] = []

    @billing.handler(orders_pb2.OrderPlaced)
    async def record(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None:
        seen.append(delivery)

    await run_until(Worker(billing, nc), lambda: len(seen) == 1)
    assert dict(seen[0].extensions) == {}
    assert seen[0].headers == {"tenant": "t-1"}
