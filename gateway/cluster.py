"""A JetStream cluster of embedded nats-servers on loopback (`jetgate up --cluster 3`).

Each node is a `gateway.embedded.NatsServer` with its own store dir
(`<data_dir>/nats/<node>`), client port, cluster (route) port and monitoring port, and
the same `cluster {}` block a real deployment uses (`node_config`, shown in
docs/production.md): every node lists every node's route URL (its own is ignored), and
the nodes' names are stable (`jetgate-n1`...), because JetStream's Raft groups know their
peers by server name, so a node restarted on the same store dir is the same peer again.

`start()` returns once every node serves clients and the JetStream meta group has a leader
with every node a current peer (each node's `/jsz` monitoring endpoint), so the gateway's
stream reconcile can create R3 streams at once. In this mode the streams are replicated
on every node (`replicated`: replicas 1 become the cluster size at reconcile).
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from gateway.config import GatewayConfig
from gateway.embedded import NatsServer, NatsServerError, free_port

CLUSTER_NAME = "jetgate"
SIZES = (0, 1, 3, 5)  # 0 and 1: one server, no cluster


def node_config(*, cluster_listen: str, routes: Sequence[str], monitor_listen: str) -> str:
    """The nats-server config text of one node, beyond its name, ports and store dir."""
    listed = "".join(f"    {route}\n" for route in routes)
    return (
        f"http: {monitor_listen}\n"
        "cluster {\n"
        f"  name: {CLUSTER_NAME}\n"
        f"  listen: {cluster_listen}\n"
        f"  routes: [\n{listed}  ]\n"
        "}\n"
    )


class NatsCluster:
    """`size` nats-servers with JetStream in one cluster on `host`, data under `store_dir`."""

    def __init__(
        self,
        store_dir: Path,
        *,
        size: int = 3,
        host: str = "127.0.0.1",
        port: int = 0,
        sync_always: bool = False,
    ) -> None:
        """`port`: the first node's client port (0: any free one, as for the others)."""
        if size < 2:
            raise ValueError("a cluster has at least 2 nodes")
        self.store_dir = Path(store_dir).absolute()
        self.sync_always = sync_always
        cluster_ports = [free_port(host) for _ in range(size)]
        self.monitor_ports = [free_port(host) for _ in range(size)]
        routes = [f"nats-route://{host}:{p}" for p in cluster_ports]
        self.nodes = [
            NatsServer(
                self.store_dir / f"n{i + 1}",
                host=host,
                port=port if i == 0 else 0,
                sync_always=sync_always,
                name=f"jetgate-n{i + 1}",
                config=node_config(
                    cluster_listen=f"{host}:{cluster_ports[i]}",
                    routes=routes,
                    monitor_listen=f"{host}:{self.monitor_ports[i]}",
                ),
            )
            for i in range(size)
        ]
        self._host = host

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated: what the gateway and workers connect to."""
        return ",".join(node.url for node in self.nodes)

    @property
    def pid(self) -> int | None:
        """The first node's pid (a `NatsServer` look-alike for the banner)."""
        return self.nodes[0].pid

    def start(self, timeout: float = 30.0) -> None:
        """Start every node and wait until JetStream's meta group is whole (see module doc)."""
        try:
            for node in self.nodes:
                if not node.running:
                    node.start(timeout)
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node (SIGTERM, then SIGKILL after `timeout`)."""
        for node in self.nodes:
            node.stop(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until a meta leader sees every other running node as a current peer."""
        deadline = time.monotonic() + timeout
        problem = "no answer yet"
        while time.monotonic() < deadline:
            problem = self._meta_problem()
            if not problem:
                return
            time.sleep(0.05)
        raise NatsServerError(f"JetStream cluster not ready after {timeout:g}s: {problem}")

    def meta(self, index: int) -> dict[str, object]:
        """Node `index`'s view of the JetStream meta group (`/jsz` `meta_cluster`)."""
        url = f"http://{self._host}:{self.monitor_ports[index]}/jsz"
        with urllib.request.urlopen(url, timeout=2) as reply:
            body = json.loads(reply.read())
        meta = body.get("meta_cluster") or {}
        return meta if isinstance(meta, dict) else {}

    def _meta_problem(self) -> str:
        running = [i for i, node in enumerate(self.nodes) if node.running]
        for index in running:
            try:
                meta = self.meta(index)
            except (OSError, ValueError) as exc:
                return f"{self.nodes[index].name}: {exc}"
            if meta.get("leader") != self.nodes[index].name:
                continue
            replicas = meta.get("replicas")
            if not isinstance(replicas, list):
                replicas = []
            current = {r.get("name") for r in replicas if isinstance(r, dict) and r.get("current")}
            missing = [self.nodes[i].name for i in running if i != index]
            missing = [name for name in missing if name not in current]
            return f"meta peers not current yet: {', '.join(missing)}" if missing else ""
        return "no meta leader yet"

    def banner_lines(self) -> list[str]:
        """The nodes, and how to watch a failover (for `jetgate up`'s banner)."""
        size = len(self.nodes)
        lines = [f"JetStream cluster {CLUSTER_NAME!r} of {size} nodes (R{size} streams):"]
        for node, monitor in zip(self.nodes, self.monitor_ports, strict=True):
            lines.append(
                f"  {node.name}: {node.url}, pid {node.pid}, monitoring "
                f"http://{self._host}:{monitor}/jsz, data {node.store_dir}"
            )
        first = self.nodes[0]
        lines += [
            "Watch a failover: `nats --server URL stream info STREAM` shows the leader; kill it "
            f"(e.g. `kill -9 {first.pid}` for {first.name}): publishing goes on, the others "
            "elect a new leader; restart jetgate up to bring the node back (it catches up)",
        ]
        return lines


def replicated(config: GatewayConfig, size: int) -> GatewayConfig:
    """`config` with its single-copy streams replicated on `size` nodes (the cluster mode)."""
    streams = tuple(
        dataclasses.replace(s, replicas=size) if s.replicas == 1 else s for s in config.streams
    )
    return dataclasses.replace(config, streams=streams)
