"""Reading: the gateway's Read next to a plain nats-py ordered read of the same events.

The events: READ_EVENTS (100k for a 5 s window, fewer for shorter windows) gateway-shaped
OrderPlaced events of READ_PER_KEY per key, the keys interleaved (round robin, as
aggregates' events are), stored into stream ORDERS with raw `publish_async` by the first of
these scenarios and reused by the others (`_stored`: same count, same last sequence).
- `read-key-plain` (baseline): every key's history through nats-py's ordered consumer
  (`js.subscribe(filter, ordered_consumer=True)`, read until `num_pending` is 0),
  READ_CONCURRENCY keys at a time.
- `read-key`: the same histories through `Read(key=...)`, READ_CONCURRENCY calls at a time.
- `read-replay-plain` (baseline): the whole stream through one nats-py ordered consumer.
- `read-replay`: one `Read(subjects={stream: ORDERS})` of the whole stream.
The clock runs from the first read to the last event received; every read is checked
(count, stream order), so a row is consistent only when every event came back in order.
CPU: this process's (the reading client), the gateway's and nats-server's.

Both readers take each event to the same depth, what a reader needs to use it: id, type,
key, time, user headers, stream sequence and stored time. Read delivers them decoded (the
client reads the fields of each StoredEvent); the plain reader decodes them as a Python
reader of jetgate events does, with `jetgate.wire.decode_envelope` and nats-py's
`msg.metadata` (`_decoded`). Without that decoding the plain rows are ~5 µs/event cheaper
(12 % of a replay); docs/performance.md gives both.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.js.api import PubAck

from bench.events import EVENT_TYPE, STREAM, SUBJECT_PREFIX
from bench.measure import Context, Row, Window, proc_cpu
from jetgate import wire
from jetgate.v1 import gateway_pb2

READ_EVENTS_PER_SECOND_OF_WINDOW = 20_000  # 5 s window: 100k events
MAX_READ_EVENTS = 100_000
READ_PER_KEY = 100
READ_CONCURRENCY = 8
READ_EVENTS_PER_RESPONSE = 256  # ReadRequest.max_events_per_response
STORE_WINDOW = 4000
READ_LIMIT = 120.0  # s

# (nats url, count) -> last sequence of the events stored for it.
_stored_for: dict[tuple[str, int], int] = {}


def _key(index: int) -> str:
    return f"r-{index:06d}"


async def _stored(ctx: Context, window: Window) -> tuple[int, list[str]]:
    """(event count, keys): the read events in ORDERS, stored now unless already there."""
    count = min(MAX_READ_EVENTS, int(window.seconds * READ_EVENTS_PER_SECOND_OF_WINDOW))
    keys = [_key(i) for i in range(max(1, count // READ_PER_KEY))]
    count = len(keys) * READ_PER_KEY
    js = ctx.nc.jetstream()
    state = (await js.stream_info(STREAM)).state
    if _stored_for.get((ctx.nats_url, count)) == state.last_seq and state.messages == count:
        return count, keys
    await js.purge_stream(STREAM)
    pending: list[asyncio.Future[PubAck]] = []
    last: PubAck | None = None
    for _ in range(READ_PER_KEY):
        for key in keys:
            _, headers = ctx.events.raw(key)
            subject = wire.subject(SUBJECT_PREFIX, EVENT_TYPE, key)
            headers[wire.CE_SUBJECT] = key
            pending.append(await js.publish_async(subject, ctx.events.payload, headers=headers))
            if len(pending) >= STORE_WINDOW:
                last = (await asyncio.gather(*pending))[-1]
                pending.clear()
    if pending:
        last = (await asyncio.gather(*pending))[-1]
    assert last is not None
    _stored_for[(ctx.nats_url, count)] = last.seq
    return count, keys


async def _timed(
    ctx: Context, window: Window, read: Callable[[int, list[str]], Awaitable[int]]
) -> Row:
    """Store (or reuse) the events, then time `read(count, keys)` -> events read in order."""
    count, keys = await _stored(ctx, window)
    pids = (ctx.gateway_pid, ctx.nats_pid)
    cpu, server_cpu, nats_cpu = time.process_time(), *(proc_cpu(p) for p in pids)
    started = time.perf_counter()
    read_in_order = await asyncio.wait_for(read(count, keys), READ_LIMIT)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    server_cpu, nats_cpu = proc_cpu(ctx.gateway_pid) - server_cpu, proc_cpu(ctx.nats_pid) - nats_cpu
    return Row(
        seconds=elapsed,
        events=read_in_order,
        events_per_s=read_in_order / elapsed,
        client_cpu_us_per_event=1e6 * cpu / count,
        server_cpu_us_per_event=1e6 * server_cpu / count if ctx.gateway_pid else None,
        nats_cpu_us_per_event=1e6 * nats_cpu / count,
        client_cpu_cores=cpu / elapsed,
        server_cpu_cores=server_cpu / elapsed if ctx.gateway_pid else None,
        nats_cpu_cores=nats_cpu / elapsed,
        ok_total=read_in_order,
        consistent=read_in_order == count,
        extra={"events_per_key": READ_PER_KEY, "keys": len(keys), "concurrency": READ_CONCURRENCY},
    )


async def _plain_ordered(ctx: Context, subject_filter: str) -> list[int]:
    """Stream sequences of every message matching `subject_filter`, via nats-py's ordered
    consumer, until it reports nothing pending."""
    sequences: list[int] = []
    done = asyncio.Event()

    async def take(msg: Msg) -> None:
        meta = msg.metadata
        _decoded(msg)
        sequences.append(meta.sequence.stream)
        if meta.num_pending == 0:
            done.set()

    js = ctx.nc.jetstream()
    sub = await js.subscribe(subject_filter, stream=STREAM, ordered_consumer=True, cb=take)
    try:
        await done.wait()
    finally:
        await sub.unsubscribe()
    return sequences


def _decoded(msg: Msg) -> wire.Envelope:
    """A stored event as a plain reader uses it (the same depth as a StoredEvent)."""
    return wire.decode_envelope(msg.subject, msg.headers or {})


def _used(stored: gateway_pb2.StoredEvent) -> int:
    """The fields of a StoredEvent a reader uses (as `_decoded`); its stream sequence."""
    event = stored.event
    _ = (event.id, event.payload.type_url, event.key, event.time, event.headers)
    _ = stored.stored_time
    return event.sequence


async def _gateway_read(ctx: Context, request: gateway_pb2.ReadRequest) -> list[int]:
    """Stream sequences of the events of one Read (which must end with CaughtUp)."""
    sequences: list[int] = []
    caught_up = False
    request.max_events_per_response = READ_EVENTS_PER_RESPONSE
    async for response in ctx.gateway.Read(request, timeout=READ_LIMIT):
        if response.HasField("events"):
            sequences += [_used(stored) for stored in response.events.events]
        elif response.HasField("event"):
            sequences.append(_used(response.event))
        else:
            caught_up = True
    if not caught_up:
        raise RuntimeError("a Read ended without CaughtUp")
    return sequences


def _in_order(sequences: list[int], expected: int) -> int:
    """`expected` when `sequences` has that many, strictly increasing, else 0."""
    ordered = all(a < b for a, b in itertools.pairwise(sequences))
    return len(sequences) if ordered and len(sequences) == expected else 0


async def _per_key(keys: list[str], read_one: Callable[[str], Awaitable[list[int]]]) -> int:
    todo = iter(keys)
    total = 0

    async def reader() -> None:
        nonlocal total
        for key in todo:
            got = _in_order(await read_one(key), READ_PER_KEY)
            if not got:
                raise RuntimeError(f"key {key}: events missing or out of order")
            total += got

    await asyncio.gather(*(reader() for _ in range(READ_CONCURRENCY)))
    return total


def _key_request(key: str) -> gateway_pb2.ReadRequest:
    return gateway_pb2.ReadRequest(key=gateway_pb2.KeySelector(event_type=EVENT_TYPE, key=key))


async def measure_key_plain(ctx: Context, window: Window) -> Row:
    """`read-key-plain`: each key's history via nats-py's ordered consumer."""

    async def read(count: int, keys: list[str]) -> int:
        return await _per_key(
            keys, lambda key: _plain_ordered(ctx, wire.key_filter(SUBJECT_PREFIX, key))
        )

    return await _timed(ctx, window, read)


async def measure_key(ctx: Context, window: Window) -> Row:
    """`read-key`: each key's history via Read(key=...)."""

    async def read(count: int, keys: list[str]) -> int:
        return await _per_key(keys, lambda key: _gateway_read(ctx, _key_request(key)))

    return await _timed(ctx, window, read)


async def measure_replay_plain(ctx: Context, window: Window) -> Row:
    """`read-replay-plain`: the whole stream via one nats-py ordered consumer."""

    async def read(count: int, keys: list[str]) -> int:
        return _in_order(await _plain_ordered(ctx, f"{SUBJECT_PREFIX}.>"), count)

    return await _timed(ctx, window, read)


async def measure_replay(ctx: Context, window: Window) -> Row:
    """`read-replay`: the whole stream via one Read(subjects=...)."""

    async def read(count: int, keys: list[str]) -> int:
        request = gateway_pb2.ReadRequest(subjects=gateway_pb2.SubjectSelector(stream=STREAM))
        return _in_order(await _gateway_read(ctx, request), count)

    return await _timed(ctx, window, read)
