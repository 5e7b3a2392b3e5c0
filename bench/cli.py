"""`python -m bench` (`make bench`): the command line.

    .venv/bin/python -m bench [--seconds 5] [--warmup 1] [--scenario NAME ...]
                              [--fsync both|default|always] [--gateway process|inprocess]
                              [--profile-gateway FILE] [--nats-cli PATH] [--results FILE]
                              [--cluster 3]
    .venv/bin/python -m bench --memory 60 [--warmup 1]

Default: every scenario, in two blocks (nats-server default durability, then
`sync_interval: always`), printed as one table with ratios and targets; results in
bench/results/latest.json (and latest-<gateway mode>.json). `--scenario` picks scenarios
(their baselines are added). `--memory SECONDS` runs only the memory check (gateway RSS
during publish-stream, `bench.memory`), written to memory.json next to --results.
`--cluster N` adds a block on a JetStream cluster of N nodes on loopback with R{N}
streams: publish-unary, publish-batch-100 and raw-pipelined (bench.harness).
Exit status 1 when the sanity check fails (stream count != OK results, errors); missed
targets are printed, not an error.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

from bench import memory, natscli
from bench.events import Events, order_payload
from bench.harness import CLUSTER_BLOCK, Options, run_block, run_table
from bench.measure import Window
from bench.report import LEGEND, environment, header, sanity, table, write_json
from bench.scenarios import SCENARIOS, with_baselines

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "latest.json"
FSYNC = {"default": ["default"], "always": ["fsync-always"], "both": ["default", "fsync-always"]}


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="jetgate publish throughput next to raw JetStream and gRPC baselines",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement per scenario")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up per scenario")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        metavar="NAME",
        help=f"repeatable, baselines are added; default: all ({', '.join(SCENARIOS)})",
    )
    parser.add_argument(
        "--fsync",
        choices=list(FSYNC),
        default="both",
        help="nats-server durability: default (ack before fsync), always "
        "(sync_interval: always), or both as two blocks of the table (default: both)",
    )
    parser.add_argument(
        "--gateway",
        choices=["process", "inprocess"],
        default="process",
        help="gateway as a separate `jetgate serve` process (default) or in this event loop",
    )
    parser.add_argument(
        "--profile-gateway",
        type=Path,
        metavar="FILE",
        help="run the gateway process under cProfile, stats to FILE (process mode only)",
    )
    parser.add_argument(
        "--nats-cli",
        type=Path,
        metavar="PATH",
        help=f"the nats CLI for the natscli-async row (default {natscli.DEFAULT_PATH})",
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS_PATH, metavar="FILE", help="results JSON"
    )
    parser.add_argument(
        "--memory",
        type=float,
        metavar="SECONDS",
        help="only the memory check: gateway RSS during SECONDS of publish-stream",
    )
    parser.add_argument(
        "--cluster",
        type=int,
        choices=(0, 3, 5),
        default=0,
        metavar="N",
        help="add a block on a JetStream cluster of N nodes (3 or 5) with R{N} streams: "
        "publish-unary, publish-batch-100 and raw-pipelined against the replicated stream",
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0:
        parser.error("--seconds must be positive and --warmup not negative")
    if args.profile_gateway and args.gateway != "process":
        parser.error("--profile-gateway needs --gateway process")
    if args.memory is not None and (args.memory <= 0 or args.gateway != "process"):
        parser.error("--memory needs positive SECONDS and --gateway process")
    if args.nats_cli is not None and natscli.find(args.nats_cli) is None:
        parser.error(f"--nats-cli {args.nats_cli}: not an executable file")
    return Options(
        window=Window(warmup=args.warmup, seconds=args.seconds),
        scenarios=with_baselines(args.scenario or list(SCENARIOS)),
        blocks=FSYNC[args.fsync],
        mode=args.gateway,
        profile=args.profile_gateway.absolute() if args.profile_gateway else None,
        natscli=natscli.find(args.nats_cli),
        results=args.results.absolute(),
        memory=args.memory,
        cluster=args.cluster,
    )


def cluster_blocks(opts: Options) -> list[str]:
    """The "cluster-N" block `--cluster N` adds (none without it)."""
    return [f"{CLUSTER_BLOCK}{opts.cluster}"] if opts.cluster else []


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m bench`; SIGTERM stops it like Ctrl-C (servers stopped)."""
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        _main(opts)
    except KeyboardInterrupt:
        print("\ninterrupted: every process stopped, no results written", file=sys.stderr)
        raise SystemExit(130) from None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _main(opts: Options) -> None:
    sizes = Events(order_payload()).sizes()
    window = opts.window
    if opts.memory is not None:
        _memory(opts, sizes)
        return
    print(
        header(
            f"gateway {opts.mode}, {window.warmup:g}s warm-up + {window.seconds:g}s per "
            f"scenario, blocks: {', '.join(opts.blocks + cluster_blocks(opts))}",
            sizes,
        ),
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="jetgate-bench-") as tmp:
        rows = run_table(opts, Path(tmp))
    consistent, sanity_text = sanity(rows)
    print(f"\n{table(rows, inprocess=opts.mode == 'inprocess')}\n\n{sanity_text}\n{LEGEND}")
    if opts.profile:
        print(f"gateway cProfile stats: {opts.profile}")
    report = {
        "environment": environment(opts.mode, sizes),
        "options": {
            "seconds": window.seconds,
            "warmup": window.warmup,
            "blocks": opts.blocks + cluster_blocks(opts),
            "cluster": opts.cluster,
            "scenarios": opts.scenarios,
            "natscli": opts.natscli,
        },
        "results": rows,
        "consistent": consistent,
    }
    also = opts.results.with_name(f"{opts.results.stem}-{opts.mode}.json")
    write_json(opts.results, report, also)
    print(f"wrote {opts.results} (and {also.name})")
    if not consistent:
        raise SystemExit(1)


def _memory(opts: Options, sizes: dict[str, int]) -> None:
    assert opts.memory is not None
    window = Window(warmup=opts.window.warmup, seconds=opts.memory)
    block = opts.blocks[-1] if len(opts.blocks) == 1 else "default"
    print(
        header(f"memory check, {window.warmup:g}s warm-up + {window.seconds:g}s, {block}", sizes),
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="jetgate-bench-") as tmp:
        result = run_block(
            opts,
            block,
            Path(tmp) / "memory",
            frozenset({"gateway"}),
            lambda ctx: memory.check(ctx, window),
        )
    result.row.block = block
    print(f"\n{result.text()}")
    path = opts.results.with_name("memory.json")
    write_json(path, {"environment": environment(opts.mode, sizes), "memory": result.summary()})
    print(f"wrote {path}")
    if not result.row.consistent:
        raise SystemExit(1)
