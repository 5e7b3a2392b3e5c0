"""jetgate's metric instruments (OpenTelemetry; exposed for Prometheus by `prometheus`).

Gateway (`PublishMetrics`):
- `messaging.client.sent.messages` (counter): events sent to JetStream, by stream, event
  type and `error.type` (absent when stored);
- `messaging.client.operation.duration` (histogram, s): one publish call (a Publish, or
  one PublishBatch / PublishStream message) from send to JetStream's last answer.
Worker (`ConsumeMetrics`):
- `messaging.client.consumed.messages` (counter): deliveries received, by group and stream;
- `messaging.process.duration` (histogram, s): handling one delivery, by event type and
  `jetgate.outcome` (ack, retry, dead_letter, skip, hand_back), with `error.type` on failures;
- `jetgate.consumer.dead_letters` (counter): by `jetgate.dead_letter.reason`;
- `jetgate.consumer.dead_letter_failures` (counter): dead-letter stores that failed (the
  event is held and the store retried; alert when it keeps growing);
- `jetgate.consumer.lag` and `jetgate.consumer.ack_pending` (gauges): the group consumer's
  `num_pending` (stored, not yet delivered) and `num_ack_pending`, as last read by the
  worker (every few seconds).
Prometheus sees them as e.g. `messaging_client_sent_messages_total` and
`messaging_process_duration_seconds_bucket`. No subject or key is ever a label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from observability import semconv as sc

# Per the messaging conventions' advice for durations (seconds).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
INSTRUMENTATION = "jetgate"


def _meter(provider: metrics.MeterProvider | None) -> metrics.Meter:
    return (provider or metrics.NoOpMeterProvider()).get_meter(INSTRUMENTATION)


class PublishMetrics:
    """The gateway's publish instruments (no-ops without a meter provider)."""

    def __init__(self, provider: metrics.MeterProvider | None) -> None:
        meter = _meter(provider)
        self.enabled = provider is not None
        self._sent = meter.create_counter(
            "messaging.client.sent.messages",
            unit="{message}",
            description="Events the gateway sent to JetStream",
        )
        self._duration = meter.create_histogram(
            "messaging.client.operation.duration",
            unit="s",
            description="Duration of one publish call, from send to JetStream's last answer",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )

    def sent(self, count: int, *, stream: str, event_type: str, error_type: str = "") -> None:
        """`count` events of `event_type` sent to `stream`; `error_type` when not stored."""
        attributes = {
            sc.MESSAGING_SYSTEM: sc.SYSTEM_NATS,
            sc.MESSAGING_OPERATION_NAME: sc.PUBLISH,
            sc.NATS_STREAM: stream,
            sc.EVENT_TYPE: event_type,
        }
        if error_type:
            attributes[sc.ERROR_TYPE] = error_type
        self._sent.add(count, attributes)

    def operation(self, seconds: float, *, error_type: str = "") -> None:
        """One publish call took `seconds`; `error_type` when any of its events failed."""
        attributes = {
            sc.MESSAGING_SYSTEM: sc.SYSTEM_NATS,
            sc.MESSAGING_OPERATION_TYPE: sc.OPERATION_SEND,
            sc.MESSAGING_OPERATION_NAME: sc.PUBLISH,
        }
        if error_type:
            attributes[sc.ERROR_TYPE] = error_type
        self._duration.record(seconds, attributes)


class ConsumeMetrics:
    """One worker's instruments; `pending()` gives (num_pending, num_ack_pending) or None;
    `gauges=False`: no lag gauges (`pending` unused)."""

    def __init__(
        self,
        provider: metrics.MeterProvider | None,
        *,
        group: str,
        stream: str,
        pending: Callable[[], tuple[int, int] | None],
        gauges: bool = True,
    ) -> None:
        meter = _meter(provider)
        self.enabled = provider is not None
        self._pending = pending
        self._base = {
            sc.MESSAGING_SYSTEM: sc.SYSTEM_NATS,
            sc.MESSAGING_CONSUMER_GROUP_NAME: group,
            sc.NATS_STREAM: stream,
        }
        self._received = {**self._base, sc.MESSAGING_OPERATION_NAME: sc.OPERATION_RECEIVE}
        self._consumed = meter.create_counter(
            "messaging.client.consumed.messages",
            unit="{message}",
            description="Deliveries the worker received from JetStream",
        )
        self._duration = meter.create_histogram(
            "messaging.process.duration",
            unit="s",
            description="Duration of handling one delivery",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._dead = meter.create_counter(
            "jetgate.consumer.dead_letters",
            unit="{message}",
            description="Deliveries moved to the dead-letter stream",
        )
        self._dead_failed = meter.create_counter(
            "jetgate.consumer.dead_letter_failures",
            unit="{message}",
            description="Dead-letter stores that failed (the event is held and retried)",
        )
        if not gauges:
            # Many workers in one process (the gateway's Subscribe members): an observable
            # gauge keeps the callback of the first worker that created it, so none at all.
            return
        meter.create_observable_gauge(
            "jetgate.consumer.lag",
            callbacks=[self._observe(0)],
            unit="{message}",
            description="Events stored for the group but not delivered yet (num_pending)",
        )
        meter.create_observable_gauge(
            "jetgate.consumer.ack_pending",
            callbacks=[self._observe(1)],
            unit="{message}",
            description="Events delivered to the group and not acknowledged yet",
        )

    def received(self) -> None:
        """One delivery arrived."""
        self._consumed.add(1, self._received)

    def processed(
        self, seconds: float, *, event_type: str, outcome: str, error_type: str = ""
    ) -> None:
        """One delivery was handled in `seconds` with `outcome`."""
        if not self.enabled:
            return  # runs per delivery: skip building the attributes for a no-op
        attributes = {
            **self._base,
            sc.MESSAGING_OPERATION_NAME: sc.PROCESS,
            sc.EVENT_TYPE: event_type,
            sc.OUTCOME: outcome,
        }
        if error_type:
            attributes[sc.ERROR_TYPE] = error_type
        self._duration.record(seconds, attributes)

    def dead_lettered(self, reason: str) -> None:
        """One delivery went to the dead-letter stream for `reason`."""
        self._dead.add(1, {**self._base, sc.DEAD_LETTER_REASON: reason})

    def dead_letter_failed(self) -> None:
        """Storing one dead letter failed (it is retried)."""
        self._dead_failed.add(1, self._base)

    def _observe(self, index: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            pending = self._pending()
            return [] if pending is None else [Observation(pending[index], self._base)]

        return observe
