"""The memory check: the gateway's RSS over a long publish-stream run (`--memory SECONDS`).

After the warm-up, the gateway process's VmRSS (/proc/<pid>/status) is sampled about every
second of the measurement (first sample at its start, last at its end). The target: RSS
stays flat, every sample within MAX_GROWTH of the first. Needs `--gateway process`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bench.events import STREAM
from bench.measure import Context, Row, Window, measure_run, proc_rss
from bench.scenarios import PER_RPC, run_stream

SCENARIO = "publish-stream"
MAX_GROWTH = 0.10
MIB = 1024 * 1024


@dataclass
class MemoryReport:
    """RSS samples (seconds since the first, bytes) and the publish-stream row."""

    row: Row
    samples: list[tuple[float, int]] = field(default_factory=list)

    @property
    def start(self) -> int:
        return self.samples[0][1]

    @property
    def end(self) -> int:
        return self.samples[-1][1]

    @property
    def peak(self) -> int:
        return max(rss for _, rss in self.samples)

    @property
    def growth(self) -> float:
        """End over start, minus 1."""
        return self.end / self.start - 1

    @property
    def peak_growth(self) -> float:
        return self.peak / self.start - 1

    @property
    def flat(self) -> bool:
        return bool(self.samples) and self.peak_growth <= MAX_GROWTH

    def summary(self) -> dict[str, object]:
        return {
            "scenario": SCENARIO,
            "rss_start_bytes": self.start,
            "rss_end_bytes": self.end,
            "rss_max_bytes": self.peak,
            "growth": self.growth,
            "max_growth": self.peak_growth,
            "max_growth_allowed": MAX_GROWTH,
            "flat": self.flat,
            "samples": self.samples,
            "row": self.row,
        }

    def text(self) -> str:
        row = self.row
        verdict = "ok" if self.flat else "FAIL"
        return (
            f"memory: {SCENARIO} for {row.seconds:.0f}s after warm-up, gateway RSS sampled "
            f"every second ({len(self.samples)} samples)\n"
            f"  RSS start {self.start / MIB:.1f} MiB, end {self.end / MIB:.1f} MiB, max "
            f"{self.peak / MIB:.1f} MiB; growth {100 * self.growth:+.1f} % (end), "
            f"{100 * self.peak_growth:+.1f} % (max); target: within "
            f"{100 * MAX_GROWTH:.0f} %: {verdict}\n"
            f"  {row.events_per_s:,.0f} events/s, {row.events:,} events; sanity "
            f"{'OK' if row.consistent else 'FAIL'}: stream {row.stream_messages or 0:,} vs OK "
            f"{row.ok_total:,}, errors {row.failed_total}"
        )


async def check(ctx: Context, window: Window) -> MemoryReport:
    """Run publish-stream for `window`, sampling the gateway's RSS each second."""
    pid = ctx.gateway_pid
    if pid is None:
        raise RuntimeError("the memory check needs the gateway as a process")
    samples: list[tuple[float, int]] = []
    began = 0.0

    def sample() -> None:
        nonlocal began
        now = time.perf_counter()
        began = began or now
        samples.append((round(now - began, 3), proc_rss(pid)))

    row = await measure_run(
        run_stream(), ctx, window, server="gateway", stream=STREAM, latency=PER_RPC, tick=sample
    )
    row.scenario = SCENARIO
    return MemoryReport(row=row, samples=samples)
