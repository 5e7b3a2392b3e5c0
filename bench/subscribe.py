"""Consuming over gRPC: `subscribe` next to `consume`, and what a stalled client costs.

- `subscribe`: one Python grpc.aio client joins a declared group with Subscribe
  (max_in_flight SUBSCRIBE_CREDITS), no-op processing, and acks every delivery of a
  response in one request message. It drains the same events as `consume` (stored in stream
  CONSUME by `bench.consume`) through a gateway process of its own (`jetgate serve`, the
  demo config plus stream CONSUME and group GROUP, written into the work directory; started
  after the events are stored, so its start is not timed; metrics off like the `consume`
  row's worker, which records none). The clock runs from the open to
  the last APPLIED confirmation (the gateway acked the event). CPU: this process (the
  client), the gateway process (`server_*`: the group's worker and gRPC) and nats-server.
- the stalled client (`python -m bench.subscribe --stalled`): a client opens with
  max_in_flight N and never reads a response; the gateway's RSS growth with 20k events of
  1 KiB stored shows what it holds for it: at most N unsettled plus min(N, 256)
  prefetched deliveries, whatever the backlog.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from bench import consume, servers
from bench.measure import Context, Row, Window, proc_cpu, proc_rss
from gateway.embedded import NatsServer, free_port
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc

GROUP = "bench-subscribe"
SUBSCRIBE_CREDITS = 256
ACK = gateway_pb2.Settlement.ACTION_ACK
APPLIED = gateway_pb2.SettlementResult.STATUS_APPLIED

_GROUP_TOML = f"""
[[streams]]
name = "{consume.CONSUME_STREAM}"
subjects = ["consume.>"]
storage = "file"

[[groups]]
name = "{GROUP}"
stream = "{consume.CONSUME_STREAM}"
event_types = ["jetgate.examples.orders.v1.OrderPlaced"]
ack_wait = "30s"
max_ack_pending = 1000
"""


def _config(workdir: Path) -> Path:
    path = workdir / "subscribe.toml"
    path.write_text(servers.CONFIG_PATH.read_text() + _GROUP_TOML)
    return path


def _start_gateway(nats_url: str, workdir: Path) -> servers.Process:
    """`jetgate serve` with the demo config plus stream CONSUME and group GROUP."""
    port = free_port()
    script = Path(sys.executable).with_name("jetgate")
    argv = [str(script), "serve", "--config", str(_config(workdir))]
    # Metrics off, as for the `consume` row's worker: the same work compared.
    argv += ["--listen", f"127.0.0.1:{port}", "--metrics-listen", ""]
    env = {**servers._clean_env(), **servers.nats_env(nats_url)}
    return servers._start("subscribe-gateway", argv, workdir, f"127.0.0.1:{port}", env)


async def _requests(
    outgoing: asyncio.Queue[gateway_pb2.SubscribeRequest | None],
) -> AsyncIterator[gateway_pb2.SubscribeRequest]:
    while (request := await outgoing.get()) is not None:
        yield request


def _open(credits: int) -> gateway_pb2.SubscribeRequest:
    return gateway_pb2.SubscribeRequest(
        open=gateway_pb2.SubscribeOpen(group=GROUP, max_in_flight=credits)
    )


async def _drain(address: str, count: int) -> None:
    """Subscribe, ack each delivery (one request message per response), until `count`
    acks are confirmed APPLIED."""
    outgoing: asyncio.Queue[gateway_pb2.SubscribeRequest | None] = asyncio.Queue()
    outgoing.put_nowait(_open(SUBSCRIBE_CREDITS))
    applied = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub: gateway_pb2_grpc.EventGatewayAsyncStub = gateway_pb2_grpc.EventGatewayStub(channel)
        call = stub.Subscribe(_requests(outgoing))
        async for response in call:
            if response.deliveries:
                # Built in place (`add`): a Settlement given to the constructor is copied.
                request = gateway_pb2.SubscribeRequest()
                add = request.settlements.add
                for delivery in response.deliveries:
                    add(ack_id=delivery.ack_id, action=ACK)
                outgoing.put_nowait(request)
            for result in response.settled:
                if result.status != APPLIED:
                    raise RuntimeError(f"settlement {result.ack_id}: {result}")
                applied += 1
            if applied >= count:
                break
        call.cancel()


async def measure(ctx: Context, window: Window) -> Row:
    """`subscribe`: one gRPC client, SUBSCRIBE_CREDITS credits, no-op, acking."""
    count = min(
        consume.MAX_CONSUME_EVENTS,
        int(window.seconds * consume.CONSUME_EVENTS_PER_SECOND_OF_WINDOW),
    )
    await consume._store(ctx, count)
    gateway = _start_gateway(ctx.nats_url, ctx.workdir)
    try:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            await servers.wait_serving(channel, gateway)
        cpu, started = time.process_time(), time.perf_counter()
        nats_cpu, gateway_cpu = proc_cpu(ctx.nats_pid), proc_cpu(gateway.pid)
        await asyncio.wait_for(_drain(gateway.address, count), consume.DRAIN_LIMIT)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        nats_cpu = proc_cpu(ctx.nats_pid) - nats_cpu
        gateway_cpu = proc_cpu(gateway.pid) - gateway_cpu
    finally:
        servers.stop_process(gateway.proc)
    info = await ctx.nc.jetstream().stream_info(consume.CONSUME_STREAM)
    return Row(
        seconds=elapsed,
        events=count,
        events_per_s=count / elapsed,
        client_cpu_us_per_event=1e6 * cpu / count,
        server_cpu_us_per_event=1e6 * gateway_cpu / count,
        nats_cpu_us_per_event=1e6 * nats_cpu / count,
        client_cpu_cores=cpu / elapsed,
        server_cpu_cores=gateway_cpu / elapsed,
        nats_cpu_cores=nats_cpu / elapsed,
        ok_total=count,
        stream=consume.CONSUME_STREAM,
        stream_messages=int(info.state.messages),
        consistent=int(info.state.messages) == count,
    )


async def stalled(credits: int, events: int, payload: int) -> dict[str, float]:
    """The gateway's RSS growth for one client that opens and never reads (see module)."""
    import nats
    from nats.js.api import StreamConfig

    from bench.events import Events, order_payload

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = NatsServer(workdir / "nats")
        server.start()
        nc = await nats.connect(server.url)
        gateway: servers.Process | None = None
        try:
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name=consume.CONSUME_STREAM, subjects=["consume.>"]))
            generator = Events(order_payload(payload))
            body = generator.payload
            for _ in range(events):
                subject, headers = generator.raw("c")
                await js.publish("consume." + subject, body, headers=headers)
            gateway = _start_gateway(server.url, workdir)
            async with grpc.aio.insecure_channel(gateway.address) as channel:
                await servers.wait_serving(channel, gateway)
                await asyncio.sleep(1.0)
                before = proc_rss(gateway.pid)
                outgoing: asyncio.Queue[gateway_pb2.SubscribeRequest | None] = asyncio.Queue()
                outgoing.put_nowait(_open(credits))
                stub: gateway_pb2_grpc.EventGatewayAsyncStub = gateway_pb2_grpc.EventGatewayStub(
                    channel
                )
                call = stub.Subscribe(_requests(outgoing))  # never read
                peak = before
                for _ in range(10):
                    await asyncio.sleep(1.0)
                    peak = max(peak, proc_rss(gateway.pid))
                info = await js.consumer_info(consume.CONSUME_STREAM, GROUP)
                call.cancel()
            return {
                "credits": credits,
                "events_stored": events,
                "event_bytes": len(body),
                "rss_before_mib": before / 2**20,
                "rss_peak_mib": peak / 2**20,
                "growth_mib": (peak - before) / 2**20,
                "held_by_gateway": int(info.num_ack_pending),
            }
        finally:
            if gateway is not None:
                servers.stop_process(gateway.proc)
            await nc.close()
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stalled", action="store_true", required=True)
    parser.add_argument("--credits", type=int, nargs="+", default=[16, 256, 1000])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--payload", type=int, default=1024)
    args = parser.parse_args()
    for credits in args.credits:
        print(asyncio.run(stalled(credits, args.events, args.payload)), flush=True)


if __name__ == "__main__":
    main()
