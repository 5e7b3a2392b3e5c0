"""The `*-traced` scenarios: the same load against a second gateway with tracing on.

The harness starts Jaeger (`bench.jaeger`, memory storage, its own metrics on) and a second
`jetgate serve` with tracing on (`servers.traced_env`). `measure` runs a scenario against
that gateway, then waits for its spans to reach Jaeger (the export queue's last partial
batch leaves within the 5 s schedule delay) and checks them: Jaeger lists the
jetgate-gateway service, and a recent trace of the scenario's method has its server span and
PRODUCER spans (else the row fails the sanity check). Spans received vs expected, the spans
the gateway dropped ("Queue full" in its log) and Jaeger's CPU go into the row's `extra`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import jaeger
from bench.jaeger import Jaeger
from bench.measure import Context, Row, Window, proc_cpu
from bench.scenarios import Scenario, Traced
from bench.servers import Process

SPANS_QUIET = 6.0  # s without new spans: the rest were dropped (export every 5 s, default)
SPANS_LIMIT = 60.0  # s at most waiting for a scenario's spans
QUEUE_FULL = "Queue full"  # BatchSpanProcessor's warning, once per dropped span
GATEWAY_SERVICE = "jetgate-gateway"


@dataclass(frozen=True)
class TracedGateway:
    """The second gateway process (tracing on) and the Jaeger it exports to."""

    stub: Any  # EventGatewayStub on a grpc.aio channel
    process: Process
    jaeger: Jaeger


async def measure(
    scenario: Scenario, traced: Traced, ctx: Context, gateway: TracedGateway, window: Window
) -> Row:
    """`scenario` against the traced gateway; then its spans in Jaeger (see module doc)."""
    collector = gateway.jaeger
    received, refused_before = await asyncio.to_thread(collector.received_spans)
    dropped = _queue_full(gateway.process.log)
    jaeger_cpu = proc_cpu(collector.pid)
    on_traced = dataclasses.replace(ctx, gateway=gateway.stub, gateway_pid=gateway.process.pid)
    row = await scenario.measure(on_traced, window)
    events = row.ok_total + row.failed_total
    expected = round(events * traced.spans_per_event * traced.sampled)
    started = time.perf_counter()
    # Sampled calls: the expected count is only an estimate, so wait for the spans to stop.
    enough = received + expected if traced.sampled == 1.0 else None
    accepted, refused = await _spans_settled(collector, enough)
    waited = time.perf_counter() - started
    accepted, refused = accepted - received, refused - refused_before
    jaeger_cpu = proc_cpu(collector.pid) - jaeger_cpu
    dropped = _queue_full(gateway.process.log) - dropped
    if accepted:
        problem = await asyncio.to_thread(_check_traces, collector, traced)
    elif (1 - traced.sampled) ** (events / traced.events_per_call) > 1e-6:
        problem = ""  # with this few calls, none sampled is plausible (1 %: 264 calls, 7 %)
    else:
        problem = "no span reached Jaeger"
    jaeger_us = 1e6 * jaeger_cpu / events if events else 0.0
    row.extra.update(
        spans_expected=expected,
        spans_received=accepted,
        spans_refused=refused,
        spans_dropped_queue_full=dropped,
        spans_wait_s=round(waited, 2),
        jaeger_cpu_us_per_event=jaeger_us,
        jaeger_check=problem or "ok",
    )
    if problem:
        row.consistent = False
        last = " | ".join(jaeger.tail(gateway.process.log, 2).splitlines())[-300:]
        row.errors[f"jaeger: {problem}; gateway log ends: {last}"] = 1
    print(
        f"    spans: {accepted:,} received by Jaeger of {expected:,} expected "
        f"({traced.spans_per_event:g}/event), refused {refused}, dropped by the gateway "
        f"(queue full) {dropped:,}; Jaeger CPU {jaeger_us:.1f} µs/event (whole run); "
        f"Jaeger check: {problem or 'ok'}",
        flush=True,
    )
    return row


async def _spans_settled(collector: Jaeger, expected: int | None) -> tuple[int, int]:
    """Spans received (accepted, refused) once `expected` were accepted (None: never), or
    none came for SPANS_QUIET s (the rest were dropped), or after SPANS_LIMIT s."""
    deadline = time.perf_counter() + SPANS_LIMIT
    last, changed = -1, time.perf_counter()
    while True:
        accepted, refused = await asyncio.to_thread(collector.received_spans)
        now = time.perf_counter()
        if accepted + refused != last:
            last, changed = accepted + refused, now
        done = expected is not None and accepted >= expected
        if done or now - changed > SPANS_QUIET or now > deadline:
            return accepted, refused
        await asyncio.sleep(0.2)


def _check_traces(collector: Jaeger, traced: Traced) -> str:
    """ "" when Jaeger lists the gateway's service and a recent trace of `traced.method` has
    its server span with `events_per_call` PRODUCER children; else what is missing."""
    services = collector.services()
    if GATEWAY_SERVICE not in services:
        return f"service {GATEWAY_SERVICE} not in {services}"
    found = (
        collector.api("/api/traces", service=GATEWAY_SERVICE, operation=traced.method, limit=5).get(
            "data"
        )
        or []
    )
    for trace in found:
        kinds: dict[str, list[dict[str, Any]]] = {}
        for span in trace["spans"]:
            tags = {tag["key"]: tag["value"] for tag in span.get("tags", [])}
            kinds.setdefault(str(tags.get("span.kind")), []).append(span)
        servers = [s for s in kinds.get("server", []) if s["operationName"] == traced.method]
        if len(servers) == 1:
            parent = {"refType": "CHILD_OF", "traceID": trace["traceID"]}
            parent["spanID"] = servers[0]["spanID"]
            children = [s for s in kinds.get("producer", []) if parent in s.get("references", [])]
            if len(children) == traced.events_per_call:
                return ""
    return (
        f"no trace of {traced.method} with its server span and "
        f"{traced.events_per_call} PRODUCER child span(s) among the {len(found)} found"
    )


def _queue_full(log: Path) -> int:
    """BatchSpanProcessor's "Queue full" warnings (one per dropped span) in `log` so far."""
    try:
        with log.open("rb") as lines:
            return sum(QUEUE_FULL.encode() in line for line in lines)
    except FileNotFoundError:
        return 0
