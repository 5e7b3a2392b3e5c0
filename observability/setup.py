"""Tracing and metrics for one process, from the standard `OTEL_*` environment variables.

`configure(service_name, metrics_listen=...)` returns a `Telemetry` whose providers the
caller hands to `Gateway` / `Worker` (nothing is installed globally: tests inject their
own providers, and a process without telemetry pays nothing for it).

Tracing is on when there is somewhere to send spans:
- `OTEL_TRACES_EXPORTER` (default `otlp`; also `console`, `none`);
- `otlp` needs `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`:
  without an endpoint tracing stays off, so nothing needs a collector to run;
- `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` or
  `http/protobuf` (the specification's default). The exporters read the rest of their
  `OTEL_EXPORTER_OTLP_*` settings (headers, timeout, certificates) themselves;
- `OTEL_SERVICE_NAME` overrides the default service name (`jetgate-gateway`, or the
  group's name for a worker); `OTEL_RESOURCE_ATTRIBUTES` adds resource attributes;
- `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` pick the sampler; the default is
  parent-based always-on, so a client's sampling decision holds along the whole trace;
- `OTEL_PROPAGATORS` (default `tracecontext,baggage`) is read by OpenTelemetry itself;
- `OTEL_SDK_DISABLED=true` turns tracing and metrics off.

Metrics: when `metrics_listen` (HOST:PORT) is set, an HTTP server there answers Prometheus
scrapes (any path, e.g. `/metrics`). They are not pushed over OTLP unless
`OTEL_METRICS_EXPORTER` names `otlp` explicitly: Jaeger, the usual OTLP endpoint here, takes
no metrics.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)

from jetgate.errors import ConfigurationError
from observability.prometheus import MetricsServer

GATEWAY_SERVICE = "jetgate-gateway"
GRPC = "grpc"
HTTP_PROTOBUF = "http/protobuf"


class TelemetryConfigError(ConfigurationError, ValueError):
    """An `OTEL_*` variable has a value jetgate cannot use; the message names it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Telemetry:
    """The providers of one process (None: that signal is off) and the /metrics server."""

    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    metrics_server: MetricsServer | None = None

    def shutdown(self) -> None:
        """Flush and export what is buffered, then stop the /metrics server."""
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()
        if self.metrics_server is not None:
            self.metrics_server.close()


def configure(
    service_name: str, *, metrics_listen: str = "", metrics_port_tries: int = 1
) -> Telemetry:
    """Providers for `service_name` from the `OTEL_*` environment variables (module doc).

    `metrics_port_tries` > 1: when the port of `metrics_listen` is taken, try the next ones
    (workers of one host share a default). Raises TelemetryConfigError for bad settings
    (before anything starts) and OSError or ValueError when no port could be bound.
    """
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Telemetry()
    span_exporters = _span_exporters(env)
    metric_exporter = None
    if "otlp" in _names(env, "OTEL_METRICS_EXPORTER", ""):
        metric_exporter = _otlp_metric_exporter(env)
    server = None
    if metrics_listen:
        try:
            server = MetricsServer.start(metrics_listen, tries=metrics_port_tries)
        except BaseException:
            for exporter in span_exporters:
                exporter.shutdown()
            raise
    # The SDK reads OTEL_RESOURCE_ATTRIBUTES and the sampler variables itself.
    resource = Resource.create({SERVICE_NAME: env.get("OTEL_SERVICE_NAME") or service_name})
    tracer_provider = None
    if span_exporters:
        tracer_provider = TracerProvider(resource=resource)
        for exporter in span_exporters:
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    readers: list[MetricReader] = []
    if server is not None:
        readers.append(server.reader)
    if metric_exporter is not None:
        readers.append(PeriodicExportingMetricReader(metric_exporter))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers) if readers else None
    return Telemetry(
        tracer_provider=tracer_provider, meter_provider=meter_provider, metrics_server=server
    )


def _names(env: Mapping[str, str], variable: str, default: str) -> list[str]:
    return [n.strip().lower() for n in env.get(variable, default).split(",") if n.strip()]


def _protocol(env: Mapping[str, str], signal: str) -> str:
    variable = f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"
    if not env.get(variable):
        variable = "OTEL_EXPORTER_OTLP_PROTOCOL"
    protocol = env.get(variable) or HTTP_PROTOBUF
    if protocol not in (GRPC, HTTP_PROTOBUF):
        raise TelemetryConfigError(f"{variable}: {protocol!r} (use grpc or http/protobuf)")
    return protocol


def _span_exporters(env: Mapping[str, str]) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in _names(env, "OTEL_TRACES_EXPORTER", "otlp"):
        if name == "none":
            return []
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
                "OTEL_EXPORTER_OTLP_ENDPOINT"
            ):
                exporters.append(_otlp_span_exporter(env))
        else:
            raise TelemetryConfigError(
                f"OTEL_TRACES_EXPORTER: {name!r} (use otlp, console or none)"
            )
    return exporters


def _otlp_span_exporter(env: Mapping[str, str]) -> SpanExporter:
    if _protocol(env, "TRACES") == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter()


def _otlp_metric_exporter(env: Mapping[str, str]) -> MetricExporter:
    if _protocol(env, "METRICS") == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    return HttpMetricExporter()
