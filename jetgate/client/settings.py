"""Settings of `jetgate.client.Client`: batching (like Pub/Sub's) and retries."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

# Codes a retry never cures: the request itself is wrong or not allowed.
NEVER_RETRIED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchSettings:
    """How concurrent `publish()` calls become PublishStream request messages.

    A batch is sent as soon as it holds `max_events` events or `max_bytes` bytes; else as
    soon as the stream is idle (nothing awaiting an answer: a lone event is sent at once);
    else, while earlier batches are in flight, it gathers events for at most `max_delay`
    seconds after its first one. At most `max_batches_in_flight` request messages await an
    answer (keep it <= the gateway's `stream_window`), and at most `max_in_flight` events
    are inside the client at once: `publish()` awaits room beyond that (backpressure).
    `ordered_keys`: events of one key are stored in the order `publish()` was called (a
    key's next event is sent once its previous one is answered).
    """

    max_events: int = 500
    max_bytes: int = 1024 * 1024
    max_delay: float = 0.005
    max_batches_in_flight: int = 8
    max_in_flight: int = 10_000
    ordered_keys: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.max_events <= 1000:
            raise ValueError("max_events must be within 1..1000 (the gateway's largest batch)")
        if self.max_bytes < 1024:
            raise ValueError("max_bytes must be at least 1024")
        if not 0 <= self.max_delay <= 10:
            raise ValueError("max_delay must be within 0..10 seconds")
        if self.max_batches_in_flight < 1 or self.max_in_flight < 1:
            raise ValueError("max_batches_in_flight and max_in_flight must be at least 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetrySettings:
    """Which failures the client sends again (same event id: stored once) and how often.

    Attempt n (1-based) waits `initial_backoff * multiplier**(n-1)` seconds (at most
    `max_backoff`, with up to 50 % jitter off) before the next; a publish gives up after
    `max_attempts` attempts or when `deadline` seconds passed since `publish()` was called.
    `attempt_timeout`: how long one sent batch may wait for its answer before the stream is
    abandoned and its events count as DEADLINE_EXCEEDED (keep it above the gateway's
    `publish_timeout`).
    """

    codes: frozenset[grpc.StatusCode] = field(
        default_factory=lambda: frozenset(
            {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
        )
    )
    max_attempts: int = 8
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    deadline: float = 60.0
    attempt_timeout: float = 15.0

    def __post_init__(self) -> None:
        if never := self.codes & NEVER_RETRIED:
            names = ", ".join(sorted(c.name for c in never))
            raise ValueError(f"{names} are never retried: the same request fails again")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ValueError("need 0 <= initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if self.deadline <= 0 or self.attempt_timeout <= 0:
            raise ValueError("deadline and attempt_timeout must be positive")

    def backoff(self, attempt: int, jitter: float) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based); `jitter` in [0, 1)."""
        delay = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return delay * (1 - jitter / 2)
