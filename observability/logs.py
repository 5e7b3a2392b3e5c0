"""Log records that carry the current trace_id and span_id.

`configure_logging()` is what `jetgate` and `jetgate consume` call instead of
`logging.basicConfig`: every record gets `trace_id` and `span_id` attributes (empty
outside a span), and the line shows them when there are any, e.g.
`2026-11-26 ... WARNING jetgate.consumers [trace_id=4bf9... span_id=00f0...]: ...`,
so a log line leads straight to its trace in Jaeger.
"""

from __future__ import annotations

import logging

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


def configure_logging(level: str = "INFO") -> None:
    """Log to stderr at `level`, every line with its trace context (see module doc)."""
    handler = logging.StreamHandler()
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
