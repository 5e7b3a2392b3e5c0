"""The embedded JetStream cluster (gateway.cluster): three real nats-servers on loopback."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest
from nats.errors import Error as NatsError
from nats.js.api import StreamConfig as JsStreamConfig

from gateway.cluster import NatsCluster, node_config, replicated
from gateway.config import ConfigError, GatewayConfig, StreamConfig
from gateway.health_check import StoreCheck
from tests.support.eventually import eventually

# While a leader is elected, JetStream answers late or not at all.
TRANSIENT = (AssertionError, TimeoutError, NatsError)


async def test_a_killed_leader_is_replaced_and_catches_up_when_back(cluster: NatsCluster) -> None:
    names = {node.name for node in cluster.nodes}
    nc = await nats.connect(cluster.url.split(","))
    try:
        js = nc.jetstream()
        await js.add_stream(JsStreamConfig(name="R3", subjects=["r3.>"], num_replicas=3))

        async def leader() -> str:
            info = await js.stream_info("R3")
            assert info.cluster is not None
            assert info.cluster.leader in names
            return str(info.cluster.leader)

        first = await eventually(leader, retry_on=TRANSIENT)
        await js.publish("r3.a", b"1")
        node = next(n for n in cluster.nodes if n.name == first)
        node.kill()

        async def another() -> str:
            now = await leader()
            assert now != first
            return now

        await eventually(another, within=60, retry_on=TRANSIENT)
        await eventually(lambda: js.publish("r3.b", b"2"), within=60, retry_on=TRANSIENT)
        node.start()

        async def caught_up() -> None:
            info = await js.stream_info("R3")
            assert info.cluster is not None
            replica = [r for r in info.cluster.replicas or [] if r.name == first]
            assert replica, info.cluster
            assert replica[0].current, info.cluster
            assert info.state.messages == 2

        await eventually(caught_up, within=60, retry_on=TRANSIENT)
    finally:
        await nc.close()


def test_the_node_config_lists_every_route() -> None:
    text = node_config(
        cluster_listen="127.0.0.1:6222",
        routes=["nats-route://127.0.0.1:6222", "nats-route://127.0.0.1:6223"],
        monitor_listen="127.0.0.1:8222",
    )
    assert "listen: 127.0.0.1:6222" in text
    assert "nats-route://127.0.0.1:6223" in text
    assert "name: jetgate" in text


def test_the_production_docs_show_the_generated_node_config() -> None:
    routes = [f"nats-route://nats-{n}:6222" for n in (1, 2, 3)]
    text = node_config(cluster_listen="0.0.0.0:6222", routes=routes, monitor_listen="0.0.0.0:8222")
    assert text in (Path(__file__).parents[2] / "docs" / "production.md").read_text()


def test_cluster_mode_replicates_single_copy_streams() -> None:
    config = GatewayConfig(
        streams=(
            StreamConfig(name="A", subjects=("a.>",)),
            StreamConfig(name="B", subjects=("b.>",), replicas=5),
        )
    )
    assert [s.replicas for s in replicated(config, 3).streams] == [3, 5]


def test_a_cluster_of_two_is_refused() -> None:
    with pytest.raises(ConfigError, match="cluster"):
        GatewayConfig(cluster=2)


async def test_health_survives_the_loss_of_the_probe_streams_leader(cluster: NatsCluster) -> None:
    check = StoreCheck(stream="JETGATE_HEALTH", replicas=3, timeout=5.0)
    names = {node.name for node in cluster.nodes}
    nc = await nats.connect(cluster.url.split(","), max_reconnect_attempts=-1)
    try:
        await eventually(lambda: check.prepare(nc), retry_on=TRANSIENT)
        assert await check.run(nc) == ""
        info = await nc.jetstream().stream_info("JETGATE_HEALTH")
        assert info.cluster is not None
        assert info.cluster.leader in names
        leader = next(n for n in cluster.nodes if n.name == info.cluster.leader)
        leader.kill()

        async def healthy() -> None:
            assert await check.run(nc) == ""

        # Replicated: another node leads the probe stream and health comes back while the
        # node is down (an R1 probe stream would fail until it returns).
        await eventually(healthy, within=60, retry_on=TRANSIENT)
    finally:
        await nc.close()
