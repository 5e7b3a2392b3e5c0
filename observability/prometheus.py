"""The Prometheus endpoint of a process: an HTTP server (thread) over a private registry.

Each `MetricsServer` has its own `CollectorRegistry`, so several providers can live in one
process (tests) without sharing prometheus_client's global registry. Scrapes on any path
are answered (`/metrics` by convention).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import prometheus_client
from opentelemetry.exporter.prometheus import PrometheusMetricReader


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsServer:
    """A running /metrics endpoint; `reader` goes into the MeterProvider."""

    reader: PrometheusMetricReader
    host: str
    port: int
    _httpd: WSGIServer
    _thread: threading.Thread

    @classmethod
    def start(cls, listen: str, *, tries: int = 1) -> MetricsServer:
        """Serve on `listen` (HOST:PORT, port 0: any free one); with `tries` > 1, when the
        port is taken try the following ports. Raises OSError when none could be bound."""
        host, sep, port_text = listen.rpartition(":")
        if not sep or not port_text.isdigit() or int(port_text) > 65535:
            raise ValueError(f"metrics address {listen!r}: use HOST:PORT")
        host = host.strip("[]") or "127.0.0.1"
        registry = prometheus_client.CollectorRegistry()
        port = int(port_text)
        ports = list(range(port, min(port + max(1, tries), 65536))) if port else [0]
        for candidate in ports:
            try:
                httpd, thread = prometheus_client.start_http_server(
                    candidate, addr=host, registry=registry
                )
                break
            except OSError:
                if candidate == ports[-1]:
                    raise
        reader = PrometheusMetricReader(registry=registry)
        return cls(
            reader=reader,
            host=host,
            port=httpd.server_port,
            _httpd=httpd,
            _thread=thread,
        )

    @property
    def url(self) -> str:
        """Where Prometheus scrapes this process."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and free the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
