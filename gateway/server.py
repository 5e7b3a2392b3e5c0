"""The running gateway: NATS connection, stream reconciliation, and the gRPC server.

Serves `jetgate.v1.EventGateway`, `grpc.health.v1.Health` and server reflection (so
grpcurl works without .proto files). Health is SERVING only while NATS is connected and
the streams are reconciled: it turns NOT_SERVING on disconnect (pending publishes fail
with UNAVAILABLE at once), and back to SERVING after a reconnect once the streams are
reconciled again (a restarted server may have lost them, e.g. with memory storage).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
import nats
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from nats.aio.client import Client as NATS
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from gateway.config import GatewayConfig
from gateway.limits import MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES  # re-exported (bench)
from gateway.limits import InFlightBudget, RequestGuard, server_options
from gateway.publisher import Publisher
from gateway.reflection import enable_reflection
from gateway.registry import TypeRegistry
from gateway.routing import Router
from gateway.servicer import EventGatewayServicer
from gateway.streams import reconcile_streams
from gateway.telemetry import PublishTelemetry, server_interceptors
from gateway.validation import Validator
from jetgate.v1 import gateway_pb2, gateway_pb2_grpc
from observability import messaging
from observability.metrics import PublishMetrics

log = logging.getLogger("jetgate.gateway")

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["EventGateway"].full_name
# Start-up gives NATS this long to answer; afterwards reconnects go on for ever.
CONNECT_TIMEOUT = 10.0


class Gateway:
    """Owns every resource of one gateway process; `start()` then `stop()`.

    Tracing and metrics are off unless providers are given (`observability.configure`
    makes them from the `OTEL_*` variables; tests pass in-memory ones).
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        if not config.nats_url:
            raise ValueError("nats_url is required (jetgate up starts an embedded server)")
        self.config = config
        self.registry = TypeRegistry.load(config.type_modules, config.descriptor_sets)
        self.router = Router.build(config.routes, self.registry, config.streams)
        self._health = health.aio.HealthServicer()
        self._tracer_provider = tracer_provider
        self._metrics = PublishMetrics(meter_provider)
        self._nc: NATS | None = None
        self._publisher: Publisher | None = None
        self._server: grpc.aio.Server | None = None
        self._reconcile: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_error = ""
        self.port = 0

    async def start(self) -> None:
        """Connect to NATS, reconcile streams, then listen. Raises when any step fails."""
        if unrouted := self.router.unrouted():
            log.info("registered but not routed (cannot be published): %s", ", ".join(unrouted))
        for route in self.router.unused_routes():
            log.warning("route %r matches no registered event type", route.match)
        try:
            self._nc = await asyncio.wait_for(self._connect(), CONNECT_TIMEOUT)
        except TimeoutError:
            raise ConnectionError(
                f"cannot reach NATS at {self.config.nats_url} within {CONNECT_TIMEOUT:g}s"
            ) from None
        await self._reconcile_streams()
        self._publisher = Publisher(self._nc, max_pending=self.config.max_pending)
        await self._publisher.start()
        nc = self._nc
        validator = Validator(
            registry=self.registry,
            router=self.router,
            streams={s.name: s for s in self.config.streams},
            default_source=self.config.source,
            max_payload=lambda: nc.max_payload,
        )
        self._server = grpc.aio.server(
            interceptors=[
                *server_interceptors(self._tracer_provider),
                RequestGuard(InFlightBudget(self.config.max_inflight_request_bytes)),
            ],
            options=server_options(),
        )
        telemetry = PublishTelemetry(
            tracer_provider=self._tracer_provider, metrics=self._metrics, server=self._nats_server
        )
        servicer = EventGatewayServicer(
            config=self.config, validator=validator, publisher=self._publisher, telemetry=telemetry
        )
        gateway_pb2_grpc.add_EventGatewayServicer_to_server(servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        served = [gateway_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR]
        enable_reflection(self._server, [SERVICE_NAME, health.SERVICE_NAME], served, self.registry)
        self.port = self._server.add_insecure_port(self.config.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        await self._server.start()
        await self._set_serving(True)

    @property
    def address(self) -> str:
        """HOST:PORT the gRPC server listens on (the real port when configured as 0)."""
        return f"{self.config.listen.rpartition(':')[0]}:{self.port}"

    async def wait(self) -> None:
        """Until the gRPC server terminates."""
        if self._server is not None:
            await self._server.wait_for_termination()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting RPCs, let in-flight publishes finish (up to `grace` s), disconnect."""
        self._stopping = True
        await self._set_serving(False)
        if self._server is not None:
            await self._server.stop(grace)
        if self._reconcile is not None:
            self._reconcile.cancel()
        if self._publisher is not None:
            await self._publisher.close()
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                await self._nc.drain()

    def _nats_server(self) -> messaging.Attributes:
        url = self._nc.connected_url if self._nc is not None else None
        return messaging.server_attributes(url.hostname, url.port) if url else {}

    async def _connect(self) -> NATS:
        return await nats.connect(
            self.config.nats_url,
            name="jetgate-gateway",
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            error_cb=self._on_error,
        )

    async def _reconcile_streams(self) -> None:
        assert self._nc is not None
        changes = await reconcile_streams(
            self._nc.jetstream(), self.config.streams, self.router.event_types_by_stream()
        )
        for change in changes:
            log.info("%s", change)

    async def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self._health.set(service, status)

    async def _on_disconnected(self) -> None:
        if self._stopping:
            return
        log.warning("NATS connection lost; NOT_SERVING until it is back")
        await self._set_serving(False)
        if self._publisher is not None:
            self._publisher.fail_pending("NATS connection lost before JetStream acknowledged")

    async def _on_reconnected(self) -> None:
        self._last_error = ""
        log.info("NATS reconnected; reconciling streams")
        if self._reconcile is None or self._reconcile.done():
            self._reconcile = asyncio.create_task(self._recover())

    async def _recover(self) -> None:
        for attempt in range(1, 61):
            try:
                await self._reconcile_streams()
            except Exception as exc:
                log.warning("stream reconciliation after reconnect failed (%d): %s", attempt, exc)
                await asyncio.sleep(min(0.2 * attempt, 2.0))
                continue
            if self._nc is not None and self._nc.is_connected:
                await self._set_serving(True)
            return
        log.error("streams could not be reconciled after reconnect; staying NOT_SERVING")

    async def _on_error(self, exc: Exception) -> None:
        # While NATS is down the client reports every reconnect attempt: say it once.
        if repr(exc) != self._last_error:
            self._last_error = repr(exc)
            log.warning("NATS: %r", exc)
