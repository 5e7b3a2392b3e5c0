"""Transport limits of the gRPC server: message size, keepalive policy.

Keepalive: clients commonly ping an idle connection every 10 s, also without calls (Go's
`keepalive.ClientParameters{Time: 10s, PermitWithoutStream: true}`, Java's
`keepAliveTime(10, SECONDS)`). gRPC's default server policy allows one ping per 5 min
without data and answers the third early one with GOAWAY `too_many_pings`, which killed
idle PublishStreams after 30 s. The server accepts pings every `MIN_CLIENT_PING_MS` or
slower, with or without calls, and sends its own every `KEEPALIVE_TIME_MS` to find dead
peers (a peer that does not answer within `KEEPALIVE_TIMEOUT_MS` is disconnected, and
its calls end, so their requests stop holding memory).
"""

from __future__ import annotations

from typing import Final

# A batch of 1000 events of a few KiB each must fit in one request.
MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
# The shortest client ping interval accepted (clients should use 10 s or more).
MIN_CLIENT_PING_MS: Final = 5_000
KEEPALIVE_TIME_MS: Final = 30_000
KEEPALIVE_TIMEOUT_MS: Final = 10_000

ServerOption = tuple[str, int]


def server_options() -> list[ServerOption]:
    """The channel arguments of the gateway's `grpc.aio.server`."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # What clients may do.
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", 2),
        # The server's own pings, also on idle connections and without limit.
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.max_pings_without_data", 0),
    ]
