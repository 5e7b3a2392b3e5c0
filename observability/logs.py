"""Log records that carry the current trace_id and span_id.

`configure_logging()` is what `jetgate` and `jetgate consume` call instead of
`logging.basicConfig`: every record gets `trace_id` and `span_id` attributes (empty
outside a span), and the line shows them when there are any, e.g.
`2026-11-26 ... WARNING jetgate.consumers [trace_id=4bf9... span_id=00f0...]: ...`,
so a log line leads straight to its trace in Jaeger.

OpenTelemetry's own warnings repeat per item: with the collector down, the span export
queue fills and the SDK warns "Queue full" once per dropped span, thousands of lines a
second from a busy gateway. `RepeatFilter` lets each such message through once per
`interval` seconds, saying how many were held back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from opentelemetry import trace

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s%(trace_context)s: %(message)s"


class TraceContextFilter(logging.Filter):
    """Adds `trace_id`, `span_id` and `trace_context` (the `[...]` text or "") to records."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        trace_id = span_id = text = ""
        if context.is_valid:
            trace_id = trace.format_trace_id(context.trace_id)
            span_id = trace.format_span_id(context.span_id)
            text = f" [trace_id={trace_id} span_id={span_id}]"
        record.trace_id, record.span_id, record.trace_context = trace_id, span_id, text
        return True


class RepeatFilter(logging.Filter):
    """Passes a record of a logger under `prefix` once per `interval` s per message
    template; the next one that passes says how many were suppressed in between."""

    def __init__(
        self,
        prefix: str = "opentelemetry",
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._prefix = prefix
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()  # the SDK logs from its export threads
        self._seen: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefix):
            return True
        key = (record.name, record.msg)
        now = self._clock()
        with self._lock:
            passed, suppressed = self._seen.get(key, (-self._interval, 0))
            if now - passed < self._interval:
                self._seen[key] = (passed, suppressed + 1)
                return False
            self._seen[key] = (now, 0)
        if suppressed:
            record.msg = f"{record.msg} ({suppressed} more like this in {now - passed:.0f}s)"
        return True


def configure_logging(level: str = "INFO") -> None:
    """Log to stderr at `level`, every line with its trace context (see module doc)."""
    handler = logging.StreamHandler()
    handler.addFilter(RepeatFilter())
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
