"""The gateway's health check: can JetStream store an event now?

`StoreCheck` stores a 1 KiB message in the gateway's own probe stream (setting
`health_stream`, default `JETGATE_HEALTH`; created on connecting like the declared
streams; one subject per gateway process, one message kept per subject, an hour at most)
and waits at most `health_timeout` (default 2 s) for the answer. The connection
supervisor (`gateway.connection`) runs it every `health_interval` and turns health
NOT_SERVING while it fails. A store is the one sound test of "can an event be stored
now", and it catches:

- a server that stops answering (SIGSTOP, a dead peer the kernel has not noticed): the
  TCP connection stays open, so nats-py stays "connected" until its own pings give up
  (minutes); the check times out, NOT_SERVING within about `health_interval +
  health_timeout`;
- storage exhausted: JetStream refuses every store once the server's store limit
  (`max_file_store`, by default sized from the disk's free space at start-up) or the
  account's storage limit is reached (err_code 10023 "insufficient resources"), and on a
  really full disk (ENOSPC; nats-server 2.15 logs "critical write error") it stops
  answering stores, so the check times out. Neither is visible otherwise: account info
  shows no server limit, and the client stays connected. NOT_SERVING until a store
  succeeds again (space freed, limit raised; after ENOSPC nats-server may need a restart).
  The probe uses the declared streams' storage type (memory when all of them are memory,
  else file): it tests the store the events go to, on the server it lands on (with
  several servers, the probe stream's may not be the streams' own). It is replicated like
  the declared streams (`replicas`: their highest): in a cluster an R1 probe stream on a
  lost node would say NOT_SERVING for as long as that node is down, while the R3 streams
  store on; replicated, health is NOT_SERVING only while the probe has no leader.

A stream limit (a declared stream's `max_bytes` with discard `new`) is that stream's
business, answered per publish (RESOURCE_EXHAUSTED), not health. With `health_stream`
empty the check asks for JetStream account info instead (answering, not storing).

The check is a request (one reply inbox, cancellation-safe), not `nc.flush(timeout)`: in
nats-py 2.16 a flush that times out leaves a cancelled future behind, and the PONG that
arrives later kills the client's read loop (InvalidStateError) while it still reports
itself connected.
"""

from __future__ import annotations

import uuid

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.errors import APIError, NoStreamResponseError

# The probe stream keeps one message per subject (one subject per gateway process) for
# at most this long (s): the subjects of gone processes expire.
PROBE_MAX_AGE = 3600.0
# A probe the size of a small event, not an empty one: on a really full disk the slack of
# the last written page can take tiny records for a minute while no event fits.
PROBE_PAYLOAD = bytes(1024)
# JetStream: "stream name already in use with a different configuration".
_STREAM_NAME_IN_USE = 10058


class StoreCheck:
    """Stores a probe in stream `stream` (created by `prepare`); no stream: asks JetStream
    for account info. Each answer must come within `timeout` s."""

    def __init__(
        self,
        *,
        stream: str,
        storage: api.StorageType = api.StorageType.FILE,
        timeout: float = 2.0,
        replicas: int = 1,
    ) -> None:
        self._timeout = timeout
        self._stream = (
            api.StreamConfig(
                name=stream,
                subjects=[f"_jetgate.health.{stream}.*"],
                description="jetgate gateway health checks: can JetStream store now?",
                storage=storage,
                num_replicas=replicas,
                max_msgs_per_subject=1,
                max_age=PROBE_MAX_AGE,
                discard=api.DiscardPolicy.OLD,
            )
            if stream
            else None
        )
        self._subject = f"_jetgate.health.{stream}.{uuid.uuid4().hex}"

    async def prepare(self, nc: NATS) -> None:
        """Create (or update) the probe stream; raises when JetStream refuses."""
        if self._stream is None:
            return
        js = nc.jetstream(timeout=self._timeout)
        try:
            await js.add_stream(self._stream)
        except APIError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise
            await js.update_stream(self._stream)

    async def run(self, nc: NATS) -> str:
        """Why JetStream cannot store now; empty when it can."""
        js = nc.jetstream(timeout=self._timeout)
        try:
            if self._stream is None:
                await js.account_info()
                return ""
            try:
                await js.publish(self._subject, PROBE_PAYLOAD, stream=self._stream.name)
            except NoStreamResponseError:
                # JetStream is down, or someone deleted the probe stream: make it again.
                await self.prepare(nc)
                await js.publish(self._subject, PROBE_PAYLOAD, stream=self._stream.name)
        except TimeoutError:
            return f"JetStream did not answer within {self._timeout:g}s"
        except APIError as exc:
            code = f" (err_code {exc.err_code})" if exc.err_code else ""
            return f"JetStream cannot store: {exc.description or repr(exc)}{code}"
        except NatsError as exc:
            return f"JetStream did not answer: {exc!r}"
        return ""
