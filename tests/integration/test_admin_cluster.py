"""Admin on a real 3-node JetStream cluster: an R3 stream's cluster, leader and replicas."""

from __future__ import annotations

import dataclasses

from gateway.cluster import CLUSTER_NAME, NatsCluster, replicated
from gateway.config import GatewayConfig, load_config
from jetgate.v1 import admin_pb2
from tests.integration.admin_support import admin_stub
from tests.integration.conftest import REPO, serving
from tests.support.eventually import eventually


async def test_an_r3_stream_names_its_cluster_and_leader(cluster: NatsCluster) -> None:
    base = load_config(REPO / "jetgate.toml", env={})
    config: GatewayConfig = dataclasses.replace(
        replicated(base, 3), nats_url=cluster.url, listen="127.0.0.1:0", publish_timeout=10.0
    )
    async with serving(config) as gateway, admin_stub(gateway) as admin:

        async def orders() -> admin_pb2.StreamInfo:
            got = await admin.GetStream(admin_pb2.GetStreamRequest(stream="ORDERS"), timeout=20)
            assert got.leader, "no leader yet"  # elected after the create
            return got

        got = await eventually(orders)

    assert got.replicas == 3
    assert got.cluster == CLUSTER_NAME
    assert got.leader in {node.name for node in cluster.nodes}
