"""What `jetgate up` tells the worker processes it starts (gateway/workers.py), and what the
workers (consumers/cli.py, consumers/demo.py) read: environment variable names."""

from __future__ import annotations

from typing import Final

# HOST:PORT of the gateway, where the demo handlers publish their follow-up events.
GATEWAY_ADDRESS: Final = "JETGATE_GATEWAY"
# The NATS URL (in the environment, not on the command line: it may carry credentials).
NATS_URL: Final = "JETGATE_NATS_URL"
# An inherited pipe's file descriptor: the worker writes `ready` to it once it pulls events.
READY_FD: Final = "JETGATE_READY_FD"
READY: Final = b"ready\n"
