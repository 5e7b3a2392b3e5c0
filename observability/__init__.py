"""OpenTelemetry for jetgate (docs/design.md section 9): one trace per event, metrics, log context.

- `setup.configure(service)`: tracer and meter providers from the `OTEL_*` variables, and
  the Prometheus endpoint; `gateway` and `consumers` take the providers as arguments.
- `propagation`: trace context in NATS headers through the global propagator.
- `messaging`: the PRODUCER `publish <subject>` and CONSUMER `process <subject>` spans.
- `metrics`: the publish and consume instruments; `semconv`: every attribute name.
- `logs`: log lines with trace_id and span_id.
"""

from observability.logs import configure_logging
from observability.setup import GATEWAY_SERVICE, Telemetry, TelemetryConfigError, configure

__all__ = ["GATEWAY_SERVICE", "Telemetry", "TelemetryConfigError", "configure", "configure_logging"]
