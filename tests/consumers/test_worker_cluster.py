"""The worker against a real 3-node JetStream cluster: a consumer leader change ends the
outstanding pulls with "409 Leadership Change"; the worker pulls again from the new leader
at once and takes it as routine (no warning)."""

from __future__ import annotations

import json
import logging

import nats
import pytest
from nats.errors import Error as NatsError
from nats.js.api import StreamConfig

from consumers import Worker
from gateway.cluster import NatsCluster
from tests.consumers.conftest import STREAM, group, recording, running, store
from tests.support.eventually import eventually

TRANSIENT = (AssertionError, TimeoutError, NatsError)


async def test_a_consumer_leader_change_is_pulled_through_quietly(
    cluster: NatsCluster, caplog: pytest.LogCaptureFixture
) -> None:
    nc = await nats.connect(cluster.url.split(","))
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=STREAM, subjects=["orders.>"], num_replicas=3))
        billing = group()
        handled = recording(billing)
        # Pulls that wait long: only a pull made again after the change gets the event soon.
        worker = Worker(billing, nc, pull_expires=30.0)
        with caplog.at_level(logging.INFO, logger="jetgate"):
            async with running(worker):
                await eventually(worker.ready.is_set)
                await store(js, "o-1")
                await eventually(lambda: handled == ["o-1"])

                async def step_down() -> None:
                    reply = await nc.request(
                        f"$JS.API.CONSUMER.LEADER.STEPDOWN.{STREAM}.billing", b"", timeout=5
                    )
                    assert json.loads(reply.data).get("success"), reply.data

                await eventually(step_down, retry_on=TRANSIENT)
                await eventually(
                    lambda: "consumer leader changed" in caplog.text, what="the 409 seen"
                )
                await eventually(lambda: store(js, "o-2"), retry_on=TRANSIENT)
                await eventually(lambda: handled[-1:] == ["o-2"], within=60)
        assert "pull ended" not in caplog.text
    finally:
        await nc.close()
