"""A consumer group: its settings, its typed handlers, and its durable JetStream consumer.

A group is exactly one durable pull consumer on one stream (consumer name = group name,
explicit ack). Every worker of the group, in any process on any machine, pulls from that
consumer, so JetStream splits the events between them.

How the settings map onto the consumer (`nats consumer info ORDERS billing` shows them):
- `ack_wait`, `max_ack_pending` and `filter_subjects` are the consumer's own.
- `backoff` is NOT the consumer's `backoff`: nats-server replaces `ack_wait` by the first
  backoff value when one is set, which would redeliver any handler running longer than
  one second. The runtime applies it itself, as the delay of each `nak` (attempt n waits
  `backoff[n-1]`, the last value repeating), and records it in the consumer's metadata.
- The consumer's `max_deliver` is `max_deliver + 1`: the extra delivery only happens when
  a worker died during the last allowed attempt, and the runtime dead-letters it without
  running the handler. Without it, JetStream would stop delivering such an event and it
  would sit in the stream, handled by no one and dead-lettered by no one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from google.protobuf.message import Message
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from consumers.delivery import Delivery
from jetgate import wire
from jetgate.errors import ConfigurationError

M = TypeVar("M", bound=Message)
Handler = Callable[[M, Delivery], Awaitable[None]]
HandlerEntry = tuple[type[Message], Handler[Any]]


# A handler kept alive with in_progress may run for several ack_waits; one running this
# long is taken as hung (see `ConsumerGroup.effective_handler_timeout`).
HANDLER_TIMEOUT_FACTOR = 10


class GroupConfigError(ConfigurationError, ValueError):
    """A consumer group's settings are invalid, or JetStream refused them."""


@dataclass(frozen=True, slots=True)
class ConsumerGroup:
    """A named group of competing workers, and the handler for each event type it takes.

    ```python
    group = ConsumerGroup("billing", stream="ORDERS", filter_subjects=["orders.OrderPlaced.>"])

    @group.handler(orders_pb2.OrderPlaced)
    async def charge(event: orders_pb2.OrderPlaced, delivery: Delivery) -> None: ...
    ```
    `ack_wait` is in seconds, `backoff` a list of seconds, `concurrency` the number of
    events each worker process handles at once. `handler_timeout` (seconds; default 10 x
    ack_wait) bounds one handler call: a handler still running then is cancelled and the
    attempt counts as failed (retried with backoff, dead-lettered after the last). Events
    of a type without a handler are dead-lettered (`unknown-type`): filter the subjects to
    the types the group handles.

    `handlers` is a read-only view of the group's own registry. `dataclasses.replace()`
    gives the copy the handlers registered so far in a registry of its own: a handler
    registered on the copy later is not the original's.
    """

    name: str
    _: KW_ONLY
    stream: str
    filter_subjects: Sequence[str] = ()
    max_deliver: int = 5
    backoff: Sequence[float] = (1.0, 5.0, 30.0)
    ack_wait: float = 30.0
    concurrency: int = 16
    max_ack_pending: int = 1000
    description: str = ""
    handler_timeout: float | None = None
    handlers: Mapping[str, HandlerEntry] = field(default_factory=dict, repr=False, compare=False)
    _registry: dict[str, HandlerEntry] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problem = wire.group_problem(self.name) or self._problem()
        if problem:
            raise GroupConfigError(problem)
        # A registry of its own (never the mapping given, which may be another group's),
        # seen from outside only through a read-only view.
        object.__setattr__(self, "_registry", dict(self.handlers))
        object.__setattr__(self, "handlers", MappingProxyType(self._registry))
        object.__setattr__(self, "filter_subjects", tuple(self.filter_subjects))
        object.__setattr__(self, "backoff", tuple(float(b) for b in self.backoff))

    def _problem(self) -> str | None:
        if not self.stream:
            return "stream is required"
        for subject_filter in self.filter_subjects:
            try:
                wire.filter_tokens(subject_filter)
            except ValueError as exc:
                return str(exc)
        if self.max_deliver < 1:
            return f"max_deliver must be at least 1, not {self.max_deliver}"
        if any(b < 0 for b in self.backoff):
            return "backoff delays must not be negative"
        if self.ack_wait <= 0:
            return f"ack_wait must be positive, not {self.ack_wait}"
        if self.concurrency < 1:
            return f"concurrency must be at least 1, not {self.concurrency}"
        if self.max_ack_pending < 1:
            return f"max_ack_pending must be at least 1, not {self.max_ack_pending}"
        if self.handler_timeout is not None and not self.handler_timeout > 0:
            return f"handler_timeout must be positive, not {self.handler_timeout}"
        return None

    @property
    def effective_handler_timeout(self) -> float:
        """Seconds one handler call may take: `handler_timeout`, by default
        HANDLER_TIMEOUT_FACTOR x ack_wait (5 minutes for the default ack_wait of 30 s)."""
        if self.handler_timeout is not None:
            return self.handler_timeout
        return HANDLER_TIMEOUT_FACTOR * self.ack_wait

    def handler(self, message_type: type[M]) -> Callable[[Handler[M]], Handler[M]]:
        """Register the decorated coroutine as the handler of events of `message_type`."""
        type_name = message_type.DESCRIPTOR.full_name

        def register(function: Handler[M]) -> Handler[M]:
            if type_name in self._registry:
                raise GroupConfigError(f"group {self.name!r} already handles {type_name}")
            self._registry[type_name] = (message_type, function)
            return function

        return register

    def retry_delay(self, attempt: int) -> float:
        """Seconds before the next delivery after attempt `attempt` (1-based) failed."""
        if not self.backoff:
            return 0.0
        return self.backoff[min(attempt, len(self.backoff)) - 1]

    def consumer_config(self) -> ConsumerConfig:
        """The durable pull consumer of this group (see the module docstring)."""
        types = ",".join(sorted(self.handlers)) or "-"
        return ConsumerConfig(
            durable_name=self.name,
            name=self.name,
            description=self.description or f"jetgate consumer group {self.name}: {types}",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=self.max_deliver + 1,
            max_ack_pending=self.max_ack_pending,
            filter_subjects=list(self.filter_subjects) or None,
            metadata={
                wire.MAX_DELIVER_METADATA: str(self.max_deliver),
                wire.BACKOFF_METADATA: ",".join(f"{b:g}s" for b in self.backoff) or "-",
                wire.EVENT_TYPES_METADATA: types,
            },
        )
