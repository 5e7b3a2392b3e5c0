"""Peak gateway memory under concurrent large batches (issue 18 defect 9).

`python -m bench.inflight` starts nats-server and a `jetgate serve` process, sends `--calls`
concurrent PublishBatch requests of `--batch-mib` MiB each (entries just under NATS's 1 MiB
max_payload), and samples the gateway's VmRSS every 20 ms. It runs once per budget in
`--budgets` (`max_inflight_request_bytes`; the default 128MiB, and 64GiB, which admits
everything, i.e. the behaviour before the budget existed) and prints, per run: RSS before,
peak and after, and how many calls were stored (OK) or refused (RESOURCE_EXHAUSTED).
A run on the 2-core machine (busy): peak 810 MiB at 128MiB (4 OK, 4 refused), 1696 MiB at
64GiB (8 OK), 528 MiB at 64MiB (2 OK, 6 refused); RSS before 56 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc

from bench.measure import proc_rss
from bench.servers import start_gateway, stop_process, wait_serving
from gateway.config import parse_size
from gateway.embedded import NatsServer
from jetgate.examples.orders.v1 import orders_pb2
from jetgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc

MIB = 1024 * 1024
ENTRY_BYTES = MIB - 2048  # payload of one event: under max_payload with every header


def _batch(call: int, entries: int) -> gateway_pb2.PublishBatchRequest:
    request = gateway_pb2.PublishBatchRequest()
    for i in range(entries):
        entry = request.entries.add()
        placed = orders_pb2.OrderPlaced(order_id=f"c{call}-{i}", customer_id="x" * ENTRY_BYTES)
        entry.event.CopyFrom(event_pb2.Event(id=f"c{call}-{i}", key=f"c{call}-{i}"))
        entry.event.payload.Pack(placed)
    return request


async def _run(budget: int, calls: int, batch_mib: int, workdir: Path) -> dict[str, object]:
    entries = max(1, batch_mib * MIB // ENTRY_BYTES)
    with NatsServer(workdir / "nats") as nats:
        env = {"JETGATE_MAX_INFLIGHT_REQUEST_BYTES": str(budget)}
        gateway = start_gateway(nats.url, workdir, name=f"gateway-{budget}", env=env)
        try:
            options = [("grpc.max_send_message_length", 64 * MIB)]
            async with grpc.aio.insecure_channel(gateway.address, options=options) as channel:
                await wait_serving(channel, gateway)
                stub = gateway_pb2_grpc.EventGatewayStub(channel)
                batches = [_batch(n, entries) for n in range(calls)]
                before = proc_rss(gateway.pid)
                peak = before
                sending = [
                    asyncio.ensure_future(stub.PublishBatch(b, timeout=300)) for b in batches
                ]
                started = time.monotonic()
                while not all(s.done() for s in sending):
                    peak = max(peak, proc_rss(gateway.pid))
                    await asyncio.sleep(0.02)
                elapsed = time.monotonic() - started
                outcomes: Counter[str] = Counter()
                for call in sending:
                    error = call.exception()
                    if isinstance(error, grpc.aio.AioRpcError):
                        outcomes[error.code().name] += 1
                    elif error is not None:
                        outcomes[type(error).__name__] += 1
                    else:
                        outcomes["OK"] += 1
                after = proc_rss(gateway.pid)
        finally:
            stop_process(gateway.proc)
    return {
        "budget_mib": budget // MIB,
        "calls": calls,
        "batch_mib": round(entries * ENTRY_BYTES / MIB, 1),
        "rss_before_mib": before // MIB,
        "rss_peak_mib": peak // MIB,
        "rss_after_mib": after // MIB,
        "outcomes": dict(outcomes),
        "seconds": round(elapsed, 1),
    }


async def main_async(ns: argparse.Namespace) -> None:
    for budget in ns.budgets:
        with tempfile.TemporaryDirectory(prefix="jetgate-inflight-") as tmp:
            row = await _run(budget, ns.calls, ns.batch_mib, Path(tmp))
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=8, help="concurrent PublishBatch calls")
    parser.add_argument("--batch-mib", type=int, default=57, help="MiB per batch")
    parser.add_argument(
        "--budgets",
        type=lambda text: [parse_size(v) for v in text.split(",")],
        default=[128 * MIB, 64 * 1024 * MIB],
        help="comma-separated max_inflight_request_bytes values (default 128MiB,64GiB)",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
