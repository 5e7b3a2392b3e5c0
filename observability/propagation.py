"""Trace context in NATS headers, through the globally configured propagator.

`OTEL_PROPAGATORS` picks the propagator (default: W3C `tracecontext,baggage`, which write
`traceparent`, `tracestate` and `baggage`). NATS header names are case-sensitive and
nats-py keeps them as written, so the propagator's lower-case names arrive unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from opentelemetry import propagate
from opentelemetry.context import Context


def inject(headers: MutableMapping[str, str], context: Context | None = None) -> None:
    """Write the trace context of `context` (default: the current one) into `headers`."""
    propagate.inject(headers, context=context)


def extract(headers: Mapping[str, str] | None) -> Context:
    """The context carried by `headers`; an empty context when there is none."""
    return propagate.extract(headers or {})


def trace_headers(context: Context | None = None) -> dict[str, str]:
    """A fresh dict with just the trace headers of `context` (default: the current one)."""
    carrier: dict[str, str] = {}
    inject(carrier, context)
    return carrier


def fields() -> frozenset[str]:
    """The header names the global propagator reads and writes (W3C: `traceparent`,
    `tracestate`, `baggage`)."""
    return frozenset(propagate.get_global_textmap().fields)
