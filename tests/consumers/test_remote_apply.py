"""`RemoteMember.apply`: settling without a coroutine per settlement (the gateway's
Subscribe path), with the same results, in order, as `settle`."""

from __future__ import annotations

from nats.aio.client import Client
from nats.js import JetStreamContext

from consumers.remote import Action, Status
from tests.consumers.conftest import group, store
from tests.consumers.test_remote import member
from tests.support.eventually import eventually


async def test_apply_settles_now_and_returns_only_in_progress_to_await(
    nc: Client, js: JetStreamContext
) -> None:
    async with member(nc, group()) as taken:
        await store(js, "o-1")
        await store(js, "o-2")
        first, second = await eventually(lambda: taken.deliveries(2))
        sending = taken.remote.apply(first, Action.IN_PROGRESS)
        assert sending is not None
        await sending
        assert taken.remote.apply(first, Action.ACK) is None
        assert taken.remote.apply(second, Action.REJECT) is None  # no reason: INVALID
        assert taken.remote.apply("99", Action.ACK) is None
        assert taken.remote.apply(second, Action.NAK, delay=-1) is None
        await eventually(lambda: len(taken.results()) == 5)
        assert taken.results() == [
            (first, Status.APPLIED),
            (first, Status.APPLIED),
            (second, Status.INVALID),
            ("99", Status.UNKNOWN),
            (second, Status.INVALID),
        ]
        assert taken.remote.in_flight == 1  # `second` is still the client's
        assert taken.remote.stats.processed == 1
