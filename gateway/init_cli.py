"""`jetgate init`: a starting point in an empty folder, for someone who just ran `pip install`.

It writes a commented `jetgate.toml` (one stream, one route, where the types come from,
a consumer group for gRPC subscribers commented out) and an example `.proto`, then prints
the command that turns the `.proto` into the descriptor set the configuration names, and
how to go on. Nothing is overwritten: a file that exists stops it (exit 2) unless
`--force`.

Types come from a FileDescriptorSet (`descriptor_sets`), not a Python module: `jetgate up`
imports `type_modules` by name, and a console script does not look in the current folder,
so a module generated there would need PYTHONPATH; a descriptor set is a file path and
works as it is. The generate command uses grpcio-tools' protoc (`pip install grpcio-tools`),
so no separate protoc install is needed.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from gateway.terminal import UsageError, report

CONFIG_NAME = "jetgate.toml"
PROTO_PATH = Path("proto/example/events/v1/events.proto")
DESCRIPTOR_SET = "events.binpb"

CONFIG = f"""\
# jetgate configuration, written by `jetgate init`. Every setting can be overridden by a
# JETGATE_* variable (JETGATE_LISTEN, JETGATE_NATS_URL, ...) or a flag (`jetgate up --help`).

[gateway]
# Where the gRPC API listens.
listen = "127.0.0.1:50051"
# The NATS server. Empty: `jetgate up` starts an embedded nats-server (data under data_dir).
# nats_url = "nats://127.0.0.1:4222"
data_dir = "data"
# The event types the gateway accepts. A FileDescriptorSet file, written by:
#   python -m grpc_tools.protoc -I proto --include_imports \\
#       --descriptor_set_out={DESCRIPTOR_SET} {PROTO_PATH.as_posix()}
descriptor_sets = ["{DESCRIPTOR_SET}"]
# Or generated Python modules (*_pb2), importable by the gateway (mind PYTHONPATH):
# type_modules = ["example.events.v1.events_pb2"]
# ce-source of events published without one.
source = "example"

# A stream stores events; the gateway creates it at start-up and updates it when safe.
[[streams]]
name = "CARTS"
subjects = ["carts.>"]      # must capture every subject its routes produce
storage = "file"            # or "memory"
max_age = "30d"             # events older than this are removed ("0": keep forever)
duplicate_window = "2m"     # a retried event (same id) inside it is stored once
description = "Shopping cart events: carts.<EventType>.<cart id>"

# A route sends event types (a full proto name or a glob) to a stream, under a prefix:
# example.events.v1.ItemAdded with key c-1 is stored on subject carts.ItemAdded.c-1.
[[routes]]
match = "example.events.v1.*"
stream = "CARTS"
subject_prefix = "carts"

# A consumer group that clients in any language may join over gRPC (Subscribe); its
# consumer is created at start-up, clients cannot change its settings. Uncomment to use.
# [[groups]]
# name = "cart-audit"
# stream = "CARTS"
# filter_subjects = ["carts.>"]  # empty: the whole stream
# max_deliver = 5                # then the event goes to the DLQ stream
# backoff = ["1s", "5s", "30s"]  # delays before redeliveries
# ack_wait = "30s"               # an unsettled delivery is redelivered after it
"""

PROTO = """\
// An example event type for jetgate (written by `jetgate init`). Each top-level message is
// an event type; the event's key (here the cart id) becomes the last subject token.
syntax = "proto3";

package example.events.v1;

// A customer added an item to a cart.
message ItemAdded {
  string cart_id = 1;
  string sku = 2;
  int32 quantity = 3;
}

// A customer checked out a cart.
message CartCheckedOut {
  string cart_id = 1;
  int64 total_cents = 2;
}
"""

NEXT_STEPS = f"""\
Next:
  pip install grpcio-tools        # protoc, once
  python -m grpc_tools.protoc -I proto --include_imports --descriptor_set_out={DESCRIPTOR_SET} \\
      {PROTO_PATH.as_posix()}
  jetgate up                      # embedded nats-server + gateway on 127.0.0.1:50051
  jetgate publish ItemAdded --key c-1 --json '{{"cartId": "c-1", "sku": "s-1", "quantity": 2}}'
  jetgate events CARTS --key c-1
"""


def add_command(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Add `init` with `add_parser` (a subparsers action's)."""
    text = "write a commented jetgate.toml and an example .proto to start from"
    parser = add_parser(
        "init",
        help=text,
        description=text,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  mkdir shop && cd shop && jetgate init\n\n"
        "exit codes: 0 written, 2 a file exists (use --force)",
    )
    parser.add_argument(
        "--dir", type=Path, default=Path(), metavar="DIR", help="where (default: here)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    parser.set_defaults(operator_command=run)


def run(args: argparse.Namespace) -> int:
    """Run a parsed `jetgate init`; returns the exit code."""
    try:
        written = write(args.dir, force=args.force)
    except Exception as exc:  # one line, an exit code, never a traceback
        return report("init", exc)
    for path in written:
        print(f"wrote {path}")
    print(NEXT_STEPS, end="")
    return 0


def write(folder: Path, *, force: bool) -> list[Path]:
    """Write the configuration and the example .proto under `folder`; return their paths."""
    files = {folder / CONFIG_NAME: CONFIG, folder / PROTO_PATH: PROTO}
    existing = [str(p) for p in files if p.exists()]
    if existing and not force:
        raise UsageError(f"{', '.join(existing)} exists; nothing written (--force overwrites)")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return list(files)
