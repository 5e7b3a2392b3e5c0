"""Output: the header, the one table (a block per nats-server durability), sanity, JSON.

Ratio = events/s over the baseline's events/s in the same block (a baseline that fsync
cannot affect, grpc-echo, is measured in the first block only and used by every block),
printed with the scenario's target and ok/FAIL. "vs default" in the fsync-always block is
events/s over the same scenario's in the default block: what durable acknowledgement costs
(the gateway group-commits there), with the scenario's `durable_target` and ok/FAIL. In a
cluster-N block (`--cluster N`) it is what replication costs, and the target is the
scenario's ratio to its baseline on one server: gateway/raw on R3 >= gateway/raw on R1.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.measure import Row
from bench.scenarios import SCENARIOS
from gateway.embedded import find_nats_server

BLOCKS = {
    "default": "nats-server default sync_interval: acknowledged before fsync",
    "fsync-always": "nats-server sync_interval: always: fsync before every acknowledgement",
    "cluster-3": "3-node JetStream cluster on loopback, R3 streams (default sync_interval)",
    "cluster-5": "5-node JetStream cluster on loopback, R5 streams (default sync_interval)",
}
SHOWN_ERRORS = 5  # most frequent error kinds printed per scenario (all are in the JSON)


def header(opts_line: str, sizes: dict[str, int]) -> str:
    return (
        f"jetgate publish bench: {opts_line}, {os.cpu_count()} CPUs\n"
        f"message size: {sizes['payload_bytes']} B payload (OrderPlaced) in every scenario; "
        f"PublishRequest {sizes['publish_request_bytes']} B; NATS message = payload + "
        f"{sizes['nats_headers_bytes']} B headers (raw scenarios send the gateway's headers; "
        "natscli sends none)"
    )


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _find(rows: list[Row], name: str, block: str) -> Row | None:
    same = [r for r in rows if r.scenario == name and not r.skipped]
    return next((r for r in same if r.block == block), same[0] if same else None)


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(rows: list[Row], inprocess: bool = False) -> str:
    client = "bench+gw" if inprocess else "client"  # in-process: one number for both
    blocks = list(dict.fromkeys(r.block for r in rows))
    durable = len(blocks) > 1  # the "vs default" column
    named = max([18, *(len(r.scenario) for r in rows)])  # column widths: the longest name
    based = max([13, *(len(s.baseline or "") for r in rows if (s := SCENARIOS.get(r.scenario)))])
    columns = (
        f"{'scenario':<{named}} {'events/s':>9} {'ratio':>6} {'baseline':<{based}} {'target':<11} "
        f"{client + ' µs/ev':>14} {'server µs/ev':>12} {'nats µs/ev':>10} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'p999 ms':>8}"
        + (f" {'vs default':>10} {'target':<11}" if durable else "")
    )
    lines = [columns, "-" * len(columns)]
    for block in blocks:
        lines.append(f"[{block}] {BLOCKS.get(block, '')}")
        for r in (r for r in rows if r.block == block):
            if r.skipped:
                lines.append(f"{r.scenario:<{named}} skipped: {r.skipped}")
                continue
            scenario = SCENARIOS.get(r.scenario)
            base_name = scenario.baseline if scenario else None
            base = _find(rows, base_name, block) if base_name else None
            ratio = r.events_per_s / base.events_per_s if base and base.events_per_s else None
            target = scenario.target if scenario else None
            verdict = "-"
            if target is not None:
                passed = ratio is not None and ratio >= target
                verdict = f">={target:.2f} {'ok' if passed else 'FAIL'}"
            default = _find(rows, r.scenario, "default") if block != "default" else None
            vs_default = None
            if default is not None and default.block == "default" and default.events_per_s:
                vs_default = r.events_per_s / default.events_per_s
            durable_verdict = ""
            measured_here = base is not None and base.block == block
            if block.startswith("cluster-") and measured_here and ratio and default:
                # The cluster's target: the same ratio to a baseline measured on the cluster
                # too (gateway/raw) as on one server; grpc-echo's (no NATS) says nothing.
                r1 = _find(rows, base_name, "default") if base_name else None
                if r1 is not None and r1.events_per_s and default.block == "default":
                    r1_ratio = default.events_per_s / r1.events_per_s
                    met = ratio >= r1_ratio
                    durable_verdict = f"ratio>={r1_ratio:.2f} {'ok' if met else 'FAIL'}"
            elif (
                not block.startswith("cluster-")
                and scenario is not None
                and scenario.durable_target is not None
                and vs_default
            ):
                met = vs_default >= scenario.durable_target
                durable_verdict = f">={scenario.durable_target:.2f} {'ok' if met else 'FAIL'}"
            lines.append(
                f"{r.scenario:<{named}} {r.events_per_s:>9,.0f} {_times(ratio):>6} "
                f"{base_name or '-':<{based}} {verdict:<11} "
                f"{_fmt(r.client_cpu_us_per_event, '.1f'):>14} "
                f"{_fmt(r.server_cpu_us_per_event, '.1f'):>12} "
                f"{_fmt(r.nats_cpu_us_per_event, '.1f'):>10} {_fmt(r.p50_ms, '.2f'):>7} "
                f"{_fmt(r.p99_ms, '.2f'):>7} {_fmt(r.p999_ms, '.2f'):>8}"
                + (f" {_times(vs_default):>10} {durable_verdict}" if durable else "")
            )
    return "\n".join(lines)


LEGEND = (
    "ratio = events/s / the baseline's in the same block; target: the ratio the scenario "
    "should reach;\nvs default (fsync-always and cluster-N blocks): events/s / the same "
    "scenario's in the default block;\nits target in a cluster-N block: the ratio the "
    "scenario has on one server (default block).\n"
    "client = this process (bench client; natscli: the nats CLI process); server = the "
    "gateway or echo process\n(all threads, /proc); nats = nats-server. Latency: per RPC "
    "(stream: request message to its response),\nper message for raw-*; natscli's own "
    "latencies (per batch of 500) are in the JSON."
)


def sanity(rows: list[Row]) -> tuple[bool, str]:
    """The verdict (every measured row consistent) and its lines."""
    ran = [r for r in rows if not r.skipped]
    stored = [r for r in ran if r.stream is not None]
    consistent = all(r.consistent for r in ran)
    lines = [
        f"sanity: {'OK' if consistent else 'FAIL'}: stream messages "
        f"{sum(r.stream_messages or 0 for r in stored):,} vs OK results "
        f"{sum(r.ok_total for r in stored):,} (summed over scenarios, stream purged before "
        f"each); errors {sum(r.failed_total for r in ran)}; duplicates "
        f"{sum(r.duplicates for r in ran)}"
    ]
    for r in ran:
        where = f"{r.block} {r.scenario}"
        if not r.consistent:
            lines.append(
                f"  {where}: stream {r.stream_messages}, OK {r.ok_total:,}, "
                f"failed {r.failed_total}, duplicates {r.duplicates}"
                + (" (stopped early: too many errors)" if r.ended_early else "")
            )
        errors = collections.Counter(r.errors)
        for what, count in errors.most_common(SHOWN_ERRORS):
            lines.append(f"  {where} error x{count}: {what}")
        if len(errors) > SHOWN_ERRORS:
            lines.append(f"  {where}: {len(errors) - SHOWN_ERRORS} more error kinds in the JSON")
    return consistent, "\n".join(lines)


def environment(mode: str, sizes: dict[str, int]) -> dict[str, Any]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "?"

    try:
        server = subprocess.run(
            [str(find_nats_server()), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        server = "?"
    return {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "gateway_mode": mode,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "grpcio": version("grpcio"),
        "nats-py": version("nats-py"),
        "protobuf": version("protobuf"),
        "uvloop": version("uvloop"),
        "nats_server": server,
        "storage": "file (temporary directory per block)",
        "blocks": BLOCKS,
        **sizes,
    }


def write_json(path: Path, report: dict[str, Any], *also: Path) -> None:
    """`report` as indented JSON to `path` (and to every path in `also`)."""
    text = json.dumps(report, indent=2, default=_default) + "\n"
    for target in (path, *also):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def _default(value: object) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
