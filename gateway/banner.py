"""The start-up banner of `jetgate serve|up`: where the gateway, NATS, metrics and workers
run, and copy-paste commands to publish one event and inspect it (grpcurl, nats CLI,
jetgate events/decode/dlq), with the real addresses; when nothing is publishable (no types,
or no route for any), it says so and names the settings to add.

No secret is printed: the NATS URL goes through `jetgate.urls.redact` everywhere it is
shown, and a line says so when credentials were hidden (the nats CLI hints then need them
given separately).

The durability line states what an OK means in the running setup and never more than the
server gives: with the embedded server jetgate knows its sync setting; with an external
server it can only repeat what the operator declared (`durability`), and says so.
Replicas come from the configured streams (reconciled at start-up).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import observability
from gateway.cluster import NatsCluster
from gateway.config import GatewayConfig
from gateway.embedded import NatsServer
from gateway.server import Gateway
from gateway.workers import WorkerProcesses
from jetgate import wire
from jetgate.urls import MASK, redact

if TYPE_CHECKING:
    from gateway.processes import GatewayProcesses

DEMO_TYPE = "jetgate.examples.orders.v1.OrderPlaced"
# The last event of the demo pipeline (consumers/demo.py), shown in the banner.
DEMO_LAST_TYPE = "jetgate.examples.orders.v1.OrderShipped"


def announce(
    gateway: Gateway,
    embedded: NatsServer | NatsCluster | None,
    workers: WorkerProcesses,
    telemetry: observability.Telemetry,
    *,
    processes: GatewayProcesses | None = None,
) -> None:
    """Print where everything runs and how to publish and inspect (stdout, once ready)."""
    # Credentials never reach the output: the nats CLI hints show the URL redacted too.
    addr, url = gateway.address, redact(gateway.config.nats_url)
    where = ""
    if embedded is not None:
        where = f" (embedded, pid {embedded.pid}; JetStream data in {embedded.store_dir})"
    lines = [f"jetgate gateway listening on {addr}"]
    if processes is not None:
        lines.append(f"Gateway processes: {len(processes.targets)} on {addr} (SO_REUSEPORT)")
        lines += [
            f"  gateway process {n}: pid {pid}, metrics "
            + (f"http://{processes.metrics[int(n) - 1]}/metrics" if processes.metrics[0] else "off")
            for n, pid in processes.pids
        ]
    lines.append(f"NATS: {url}{where}")
    if url != gateway.config.nats_url:
        lines.append(f"  (credentials hidden as {MASK}: give them to the nats CLI yourself)")
    if isinstance(embedded, NatsCluster):
        lines += embedded.banner_lines()
    lines.append(durability_line(gateway.config, embedded))
    if telemetry.metrics_server is not None:
        lines.append(f"Prometheus metrics: {telemetry.metrics_server.url}")
    tracing = "off (set OTEL_EXPORTER_OTLP_ENDPOINT to send traces)"
    if telemetry.tracer_provider is not None:
        tracing = "on (where the OTEL_TRACES_EXPORTER / OTEL_EXPORTER_OTLP_* variables say)"
    lines.append(f"Tracing: {tracing}")
    tls = gateway.config.tls
    secured = gateway.security.authenticating
    transport = ("mTLS" if tls.client_ca else "TLS") if tls.enabled else "plaintext"
    auth = "no authentication"
    if secured:
        auth = f"callers authenticated, policy {gateway.config.auth.policy_file}"
    lines.append(f"gRPC security: {transport}, {auth}")
    if gateway.config.groups:
        lines.append(groups_line(gateway.config))
    # grpcurl flags for this listener (certificate and token are the caller's own).
    flags = "-plaintext"
    if tls.enabled:
        flags = "-cacert CA.pem" + (" -cert CLIENT.pem -key CLIENT.key" if tls.client_ca else "")
    if secured:
        flags += ' -H "authorization: Bearer $TOKEN"'
    routed = sorted(n for n in gateway.registry.names() if gateway.router.route(n) is not None)
    if routed:
        name = DEMO_TYPE if DEMO_TYPE in routed else routed[0]
        route = gateway.router.route(name)
        assert route is not None
        fields = ', "orderId": "o-42", "customerId": "c-7"' if name == DEMO_TYPE else ""
        payload = f'{{"@type": "{wire.type_url(name)}"{fields}}}'
        request = f'{{"event": {{"key": "o-42", "payload": {payload}}}}}'
        subject = wire.subject(route.subject_prefix, name, "o-42")
        lines += [
            "",
            "Publish an event (grpcurl; reflection is on, no .proto files needed):",
            f"  grpcurl {flags} -d '{request}' {addr} jetgate.v1.EventGateway/Publish",
            "Inspect the stream (nats CLI):",
            f"  nats --server {url} stream info {route.stream}",
            f"  nats --server {url} stream get {route.stream} --last-for {subject}",
        ]
        lines += [
            "Read it decoded (jetgate, and the nats CLI with --translate):",
            f"  jetgate events {route.stream} --key o-42 --nats-url {url}",
            f"  nats --server {url} stream get {route.stream} --last-for {subject} "
            "--translate 'jetgate decode --subject {{Subject}}'",
        ]
        if workers.pids:
            lines += _pipeline_lines(gateway, route.stream, workers)
    else:
        lines += ["", *nothing_publishable(gateway)]
    print("\n".join(lines), flush=True)


def nothing_publishable(gateway: Gateway) -> list[str]:
    """Why no event can be published, and the settings that fix it."""
    if not len(gateway.registry):
        why = "no event types are registered"
        fix = "set type_modules or descriptor_sets (JETGATE_TYPE_MODULES, JETGATE_DESCRIPTOR_SETS)"
    else:
        why = f"none of the {len(gateway.registry)} registered event types has a route"
        fix = "add a [[routes]] entry (match, stream, subject_prefix) and its [[streams]]"
    return [
        f"Nothing is publishable yet: {why}; every Publish fails with INVALID_ARGUMENT.",
        f"  To fix: {fix}.",
        "  `jetgate init` writes a commented jetgate.toml and an example .proto to start from.",
    ]


def _pipeline_lines(gateway: Gateway, stream: str, workers: WorkerProcesses) -> list[str]:
    url = redact(gateway.config.nats_url)
    # By convention (consumers/demo.py) a group's attribute is named like the group.
    groups = list(dict.fromkeys(target.partition(":")[2] for target in workers.targets))
    lines = ["", "Workers (consumer groups; `jetgate consume MODULE:GROUP` adds one more):"]
    lines += [f"  {target}  pid {pid}" for target, pid in workers.pids]
    lines += ["Watch the pipeline (nats CLI; dead letters with jetgate dlq):"]
    lines += [f"  nats --server {url} stream subjects {stream}"]
    lines += [f"  nats --server {url} consumer info {stream} {group}" for group in groups]
    last = gateway.router.route(DEMO_LAST_TYPE)
    if last is not None and last.stream == stream:
        subject = wire.subject(last.subject_prefix, DEMO_LAST_TYPE, "o-42")
        lines += [f"  nats --server {url} stream get {stream} --last-for {subject}"]
    lines += [f"  jetgate dlq list --group {groups[0]} --nats-url {url}"]
    return lines


def groups_line(config: GatewayConfig) -> str:
    """The declared groups (`[[groups]]`) a gRPC client may join, in one line."""
    groups = ", ".join(
        f"{g.name} on {g.stream}"
        + (f" ({', '.join(g.filter_subjects)})" if g.filter_subjects else "")
        for g in config.groups
    )
    return f"Consumer groups open to Subscribe: {groups}"


def durability_line(config: GatewayConfig, embedded: NatsServer | NatsCluster | None) -> str:
    """What an OK from a gateway with `config` means on disk, as far as it can know."""
    replicas = sorted({s.replicas for s in config.streams}) or [1]
    copies = "/".join(f"R{r}" for r in replicas)
    on = f"on {'1 node' if replicas == [1] else 'each replica'} ({copies} streams)"
    if embedded is not None:
        if embedded.sync_always:
            return (
                f"Durability: an OK means fsynced to disk {on} before the ack "
                "(sync_interval: always; publishes group-committed)"
            )
        return (
            f"Durability: lazy: an OK means stored by JetStream {on}, NOT yet fsynced "
            "(nats-server's default sync_interval): a power loss or OS crash can lose it"
        )
    if config.durability == "fsync":
        return (
            f"Durability: declared fsync (the server's sync_interval is not visible to "
            f"the gateway): an OK means fsynced {on} only if that server runs "
            "sync_interval: always; publishes group-committed"
        )
    return (
        f"Durability: declared lazy: an OK means stored by JetStream {on}; with the default "
        "sync_interval not yet fsynced: a power loss or OS crash can lose it"
    )
