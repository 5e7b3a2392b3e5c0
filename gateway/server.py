"""The running gateway: stream reconciliation and the gRPC server, over one NATS connection.

Serves `jetgate.v1.EventGateway`, `grpc.health.v1.Health` and server reflection (so
grpcurl works without .proto files). The NATS connection, its recovery and replacement,
and what health says are `gateway.connection.NatsSupervisor`'s. TLS/mTLS, who calls and what
they may publish are `gateway.security.ListenerSecurity`'s (made before anything connects,
so a bad certificate, token file or policy stops start-up with exit code 2).
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from nats.aio.client import Client as NATS
from nats.js import api
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from gateway.admin import AdminServicer
from gateway.config import GatewayConfig
from gateway.connection import NatsSupervisor
from gateway.group_commit import group_commit
from gateway.groups import reconcile_groups
from gateway.health_check import StoreCheck
from gateway.limits import MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES  # re-exported (bench)
from gateway.limits import InFlightBudget, RequestGuard, server_options
from gateway.publisher import Publisher
from gateway.read import Reader
from gateway.reflection import enable_reflection
from gateway.registry import TypeRegistry
from gateway.routing import Router
from gateway.security import ListenerSecurity
from gateway.servicer import EventGatewayServicer
from gateway.streams import reconcile_streams
from gateway.subscribe import Subscriptions
from gateway.telemetry import PublishTelemetry, server_interceptors
from gateway.validation import Validator
from jetgate.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from observability import messaging
from observability.metrics import PublishMetrics

log = logging.getLogger("jetgate.gateway")

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["EventGateway"].full_name
ADMIN_SERVICE_NAME = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name
# Start-up gives NATS this long to answer; afterwards recovery goes on for ever.
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
        self.security = ListenerSecurity(config)
        self.registry = TypeRegistry.load(config.type_modules, config.descriptor_sets)
        self.router = Router.build(config.routes, self.registry, config.streams)
        self._health = health.aio.HealthServicer()
        self._tracer_provider = tracer_provider
        self._metrics = PublishMetrics(meter_provider)
        self._nats = NatsSupervisor(
            config.nats_options(),
            name="jetgate-gateway",
            prepare=self._reconcile_streams,
            on_serving=self._set_serving,
            check=StoreCheck(
                stream=config.health_stream,
                # Probe the store the events go to.
                storage=(
                    api.StorageType.MEMORY
                    if config.streams and all(s.storage == "memory" for s in config.streams)
                    else api.StorageType.FILE
                ),
                timeout=config.health_timeout,
                replicas=max((s.replicas for s in config.streams), default=1),
            ),
            check_interval=config.health_interval,
        )
        self._publisher: Publisher | None = None
        self._subscriptions = Subscriptions(
            groups=config.groups,
            registry=self.registry,
            router=self.router,
            security=self.security,
            connection=self._connection,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
        self._reader = Reader(
            nats=self._connection,
            router=self.router,
            streams=config.streams,
            security=self.security,
        )
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        """Connect to NATS, reconcile streams, then listen. Raises when any step fails."""
        if unrouted := self.router.unrouted():
            log.info("registered but not routed (cannot be published): %s", ", ".join(unrouted))
        for route in self.router.unused_routes():
            log.warning("route %r matches no registered event type", route.match)
        nc = await self._nats.connect(CONNECT_TIMEOUT)
        self._publisher = Publisher(nc, max_pending=self.config.max_pending)
        await self._publisher.start()
        if self.config.durability == "fsync":
            self._publisher.coalesce_with(group_commit(self._publisher, self.config.streams))
        self._nats.attach(self._publisher)
        supervisor = self._nats
        validator = Validator(
            registry=self.registry,
            router=self.router,
            streams={s.name: s for s in self.config.streams},
            default_source=self.config.source,
            max_payload=lambda: supervisor.nc.max_payload,
        )
        self._server = grpc.aio.server(
            interceptors=[
                *server_interceptors(self._tracer_provider),
                RequestGuard(InFlightBudget(self.config.max_inflight_request_bytes)),
                *self.security.interceptors(),
            ],
            options=server_options(),
        )
        telemetry = PublishTelemetry(
            tracer_provider=self._tracer_provider, metrics=self._metrics, server=self._nats_server
        )
        servicer = EventGatewayServicer(
            config=self.config,
            validator=validator,
            publisher=self._publisher,
            telemetry=telemetry,
            security=self.security,
            subscriptions=self._subscriptions,
            reader=self._reader,
        )
        gateway_pb2_grpc.add_EventGatewayServicer_to_server(servicer, self._server)
        admin = AdminServicer(
            config=self.config,
            registry=self.registry,
            router=self.router,
            nats=self._connection,
            security=self.security,
            members=self._subscriptions.members,
        )
        admin_pb2_grpc.add_AdminServicer_to_server(admin, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        served = [gateway_pb2.DESCRIPTOR, admin_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR]
        services = [SERVICE_NAME, ADMIN_SERVICE_NAME, health.SERVICE_NAME]
        enable_reflection(self._server, services, served, self.registry)
        self.port = self.security.add_port(self._server, self.config.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        await self._server.start()
        await self._nats.watch()

    @property
    def address(self) -> str:
        """HOST:PORT the gRPC server listens on (the real port when configured as 0)."""
        return f"{self.config.listen.rpartition(':')[0]}:{self.port}"

    def reload(self) -> None:
        """Re-read changed certificate, token, key and policy files now (SIGHUP)."""
        self.security.refresh()

    @property
    def nats(self) -> NATS:
        """The current NATS connection (replaced when NATS closes one: do not keep it)."""
        return self._nats.nc

    def _connection(self) -> NATS:
        # What Subscribe, Read and Admin call for the connection at each use (never kept).
        return self._nats.nc

    async def wait(self) -> None:
        """Until the gRPC server terminates."""
        if self._server is not None:
            await self._server.wait_for_termination()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting RPCs, let in-flight publishes finish (up to `grace` s), delete the
        ended reads' consumers, disconnect."""
        await self._nats.unwatch()
        await self._subscriptions.close()
        if self._server is not None:
            await self._server.stop(grace)
        await self._reader.close()
        if self._publisher is not None:
            await self._publisher.close()
        await self._nats.close()

    def _nats_server(self) -> messaging.Attributes:
        url = self._nats.nc.connected_url
        return messaging.server_attributes(url.hostname, url.port) if url else {}

    async def _reconcile_streams(self, nc: NATS) -> None:
        changes = await reconcile_streams(
            nc.jetstream(), self.config.streams, self.router.event_types_by_stream()
        )
        for change in changes:
            log.info("%s", change)
        for group_change in await reconcile_groups(nc.jetstream(), self.config.groups):
            log.info("%s", group_change)

    async def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self._health.set(service, status)
