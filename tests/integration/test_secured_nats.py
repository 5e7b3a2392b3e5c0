"""The gateway and a worker against a secured nats-server (real processes, loopback only):
TLS with client certificates, password and nkey users limited by subject permissions, a
token; wrong credentials and missing permissions end them with exit code 1 naming the
cause, never the secret; no secret in their logs, /metrics or command lines."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import signal
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from nats.js.errors import NotFoundError

from gateway.config import GatewayConfig
from gateway.embedded import NatsServer
from jetgate import nats_options
from jetgate.v1 import gateway_pb2_grpc
from tests.integration.conftest import request, serving
from tests.integration.jetgate_up import WAIT, read_banner, read_rest, start_up
from tests.integration.secured_nats import (
    PASSWORD,
    NkeyUser,
    Operator,
    Pki,
    Started,
    nkey_user,
    run,
    scrape,
    start,
    start_gateway,
    user,
    users_block,
    wait_serving,
)
from tests.support.eventually import eventually

TOKEN = "t0k3n-9917-secret"
NO_JS_API = ("$JS.API.>",)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.make(tmp_path / "pki")


@pytest.fixture
def worker_key(tmp_path: Path) -> NkeyUser:
    return NkeyUser.make(tmp_path / "worker.nk")


@pytest.fixture
def tls_server(tmp_path: Path, pki: Pki, worker_key: NkeyUser) -> Iterator[NatsServer]:
    """TLS with client certificates required; users: `gateway` (password; may not publish
    OrderPaid), `nojs` (password; may not use the JetStream API), `app` (password; may do
    anything) and the worker's nkey."""
    config = pki.server_block() + users_block(
        user("gateway", publish_deny=["orders.OrderPaid.>"]),
        user("nojs", publish_deny=NO_JS_API),
        user("app"),
        nkey_user(worker_key),
    )
    server = NatsServer(tmp_path / "nats-tls", config=config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def tls_url(server: NatsServer) -> str:
    return f"tls://127.0.0.1:{server.port}"


def gateway_env(server: NatsServer, pki: Pki, name: str = "gateway") -> dict[str, str]:
    return {
        "JETGATE_NATS_URL": tls_url(server),
        "JETGATE_NATS_USER": name,
        "JETGATE_NATS_PASSWORD": PASSWORD,
        **pki.client_env(),
    }


def worker_env(server: NatsServer, pki: Pki, key: NkeyUser, record: Path) -> dict[str, str]:
    return {
        "JETGATE_NATS_URL": tls_url(server),
        "JETGATE_NATS_NKEY_SEED_FILE": str(key.seed_file),
        "JETGATE_TEST_RECORD": str(record),
        **pki.client_env(),
    }


def verdict(stderr: str) -> str:
    """The line a failed `jetgate` command ends with: why it stopped (lower case)."""
    return [line for line in stderr.splitlines() if line.startswith("jetgate: ")][-1].lower()


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")


def consume_args() -> list[str]:
    return ["consume", "tests.consumers.groups:recorder"]


async def test_gateway_and_worker_over_mtls_with_password_and_nkey_leak_no_secret(
    tmp_path: Path, tls_server: NatsServer, pki: Pki, worker_key: NkeyUser
) -> None:
    record = tmp_path / "record"
    gateway = start_gateway(tmp_path, gateway_env(tls_server, pki))
    worker: Started | None = None
    try:
        await wait_serving(gateway)
        worker = start(
            tmp_path, "worker", consume_args(), worker_env(tls_server, pki, worker_key, record)
        )
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.EventGatewayStub(channel)
            reply = await stub.Publish(request("o-1"), timeout=10)
            assert reply.sequence > 0

            def handled() -> bool:
                assert worker is not None
                assert worker.proc.poll() is None, worker.output()
                return record.exists() and reply.event_id in record.read_text()

            await eventually(handled, within=30, what="the worker handled the event")
        texts = {
            "gateway /metrics": await scrape(gateway.metrics),
            "worker /metrics": await scrape(worker.metrics),
            "gateway command line": gateway.cmdline(),
            "worker command line": worker.cmdline(),
        }
        assert "jetgate_" in texts["gateway /metrics"]
    finally:
        codes = [p.stop() for p in (worker, gateway) if p is not None]
    assert codes == [0, 0]
    texts["gateway log"] = gateway.output()
    texts["worker log"] = worker.output()
    assert "consuming ORDERS" in texts["worker log"]
    for secret in (PASSWORD, worker_key.seed, worker_key.seed[:20]):
        leaks = [where for where, text in texts.items() if secret in text]
        assert not leaks, f"a secret in {leaks}"


async def test_publish_on_a_subject_the_nats_user_may_not_is_permission_denied(
    tmp_path: Path, tls_server: NatsServer, pki: Pki
) -> None:
    from google.protobuf import any_pb2

    from jetgate.examples.orders.v1 import orders_pb2

    gateway = start_gateway(tmp_path, gateway_env(tls_server, pki))
    try:
        await wait_serving(gateway)
        paid = request("o-2")
        payload = any_pb2.Any()
        payload.Pack(orders_pb2.OrderPaid(order_id="o-2"))
        paid.event.payload.CopyFrom(payload)
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.EventGatewayStub(channel)
            for _ in range(3):  # a client repeating it does not flood the log
                with pytest.raises(grpc.aio.AioRpcError) as denied:
                    await stub.Publish(paid, timeout=30)
                assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED, denied.value
                assert "'orders.OrderPaid.o-2'" in (denied.value.details() or ""), denied.value
            # What the user may publish still goes through.
            assert (await stub.Publish(request("o-3"), timeout=10)).sequence > 0
    finally:
        assert gateway.stop() == 0
    assert gateway.output().lower().count("permissions violation") == 1, gateway.output()


def test_serve_with_a_wrong_password_exits_1_naming_the_cause(
    tls_server: NatsServer, pki: Pki
) -> None:
    env = {**gateway_env(tls_server, pki), "JETGATE_NATS_PASSWORD": "wrong-" + PASSWORD}
    done = run(["serve", "--config", "jetgate.toml", "--listen", "127.0.0.1:0"], env)
    assert done.returncode == 1, done.stderr
    assert "nats refused the credentials (authorization violation)" in verdict(done.stderr)
    assert PASSWORD not in done.stdout + done.stderr


def test_consume_with_an_unknown_nkey_exits_1_naming_the_cause(
    tmp_path: Path, tls_server: NatsServer, pki: Pki
) -> None:
    stranger = NkeyUser.make(tmp_path / "stranger.nk")
    env = worker_env(tls_server, pki, stranger, tmp_path / "record")
    done = run(consume_args(), env)
    assert done.returncode == 1, done.stderr
    assert "nats refused the credentials (authorization violation)" in verdict(done.stderr)
    assert stranger.seed not in done.stdout + done.stderr


def test_serve_without_a_client_certificate_exits_1_naming_tls(
    tls_server: NatsServer, pki: Pki
) -> None:
    env = gateway_env(tls_server, pki)
    del env["JETGATE_NATS_TLS_CERT_FILE"], env["JETGATE_NATS_TLS_KEY_FILE"]
    done = run(["serve", "--config", "jetgate.toml", "--listen", "127.0.0.1:0"], env)
    assert done.returncode == 1, done.stderr
    # e.g. (TLSV13_ALERT_CERTIFICATE_REQUIRED): the reason depends on the TLS version.
    assert "tls handshake with nats failed" in verdict(done.stderr), done.stderr
    assert PASSWORD not in done.stdout + done.stderr


def test_serve_with_an_untrusted_server_certificate_exits_1_naming_tls(
    tmp_path: Path, tls_server: NatsServer, pki: Pki
) -> None:
    other = Pki.make(tmp_path / "other-pki")
    env = {**gateway_env(tls_server, pki), "JETGATE_NATS_TLS_CA_FILE": str(other.ca)}
    done = run(["serve", "--config", "jetgate.toml", "--listen", "127.0.0.1:0"], env)
    assert done.returncode == 1, done.stderr
    assert "tls handshake with nats failed" in verdict(done.stderr), done.stderr


def test_serve_whose_user_may_not_use_jetstream_exits_1_naming_it(
    tls_server: NatsServer, pki: Pki
) -> None:
    done = run(
        ["serve", "--config", "jetgate.toml", "--listen", "127.0.0.1:0"],
        gateway_env(tls_server, pki, name="nojs"),
    )
    assert done.returncode == 1, done.stderr
    # The reason it stops (not only a logged line); nats-py reports subjects in lower case.
    assert "permissions violation for publish on '$js.api." in verdict(done.stderr), done.stderr
    assert PASSWORD not in done.stdout + done.stderr


def test_consume_whose_user_may_not_use_jetstream_exits_1_naming_it(
    tmp_path: Path, pki: Pki
) -> None:
    key = NkeyUser.make(tmp_path / "nojs.nk")
    config = pki.server_block() + users_block(nkey_user(key, publish_deny=NO_JS_API))
    with NatsServer(tmp_path / "nats-nojs", config=config) as server:
        done = run(consume_args(), worker_env(server, pki, key, tmp_path / "record"))
    assert done.returncode == 1, done.stderr
    assert "permissions violation for publish on '$js.api." in verdict(done.stderr), done.stderr
    assert key.seed not in done.stdout + done.stderr


async def test_gateway_and_worker_with_a_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    record = tmp_path / "record"
    with NatsServer(tmp_path / "nats-token", token=TOKEN) as server:
        env = {"JETGATE_NATS_URL": server.url, "JETGATE_NATS_TOKEN_FILE": str(token_file)}
        gateway = start_gateway(tmp_path, env)
        worker: Started | None = None
        try:
            await wait_serving(gateway)
            worker = start(
                tmp_path, "worker", consume_args(), {**env, "JETGATE_TEST_RECORD": str(record)}
            )
            async with grpc.aio.insecure_channel(gateway.address) as channel:
                stub = gateway_pb2_grpc.EventGatewayStub(channel)
                reply = await stub.Publish(request("o-4"), timeout=10)

            def handled() -> bool:
                assert worker is not None
                assert worker.proc.poll() is None, worker.output()
                return record.exists() and reply.event_id in record.read_text()

            await eventually(handled, within=30, what="the worker handled the event")
        finally:
            codes = [p.stop() for p in (worker, gateway) if p is not None]
    assert codes == [0, 0]
    assert TOKEN not in gateway.output() + (worker.output() if worker else "")


def test_a_wrong_token_gives_exit_1_without_the_token(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "nats-token", token=TOKEN) as server:
        env = {"JETGATE_NATS_URL": server.url, "JETGATE_NATS_TOKEN": "not-" + TOKEN}
        done = run(["dlq", "list", "--group", "recorder"], env)
    assert done.returncode == 1, done.stderr
    assert "nats refused the credentials (authorization violation)" in verdict(done.stderr)
    assert TOKEN not in done.stdout + done.stderr


async def test_gateway_and_worker_with_creds_files(tmp_path: Path) -> None:
    """Decentralized auth (operator, account and user JWTs made in the test, no nsc)."""
    operator = Operator.make()
    gateway_creds, worker_creds = tmp_path / "gateway.creds", tmp_path / "worker.creds"
    seeds = [operator.creds(gateway_creds, "gateway"), operator.creds(worker_creds, "worker")]
    record = tmp_path / "record"
    with NatsServer(tmp_path / "nats-creds", config=operator.server_block()) as server:
        gateway = start_gateway(
            tmp_path,
            {"JETGATE_NATS_URL": server.url, "JETGATE_NATS_CREDS_FILE": str(gateway_creds)},
        )
        worker: Started | None = None
        try:
            await wait_serving(gateway)
            env = {
                "JETGATE_NATS_URL": server.url,
                "JETGATE_NATS_CREDS_FILE": str(worker_creds),
                "JETGATE_TEST_RECORD": str(record),
            }
            worker = start(tmp_path, "worker", consume_args(), env)
            async with grpc.aio.insecure_channel(gateway.address) as channel:
                stub = gateway_pb2_grpc.EventGatewayStub(channel)
                reply = await stub.Publish(request("o-5"), timeout=10)

            def handled() -> bool:
                assert worker is not None
                assert worker.proc.poll() is None, worker.output()
                return record.exists() and reply.event_id in record.read_text()

            await eventually(handled, within=30, what="the worker handled the event")
        finally:
            codes = [p.stop() for p in (worker, gateway) if p is not None]
        # A .creds file of another operator's account: refused.
        stranger = tmp_path / "stranger.creds"
        Operator.make().creds(stranger, "stranger")
        done = run(
            ["dlq", "list", "--group", "recorder"],
            {"JETGATE_NATS_URL": server.url, "JETGATE_NATS_CREDS_FILE": str(stranger)},
        )
    assert codes == [0, 0]
    assert done.returncode == 1, done.stderr
    assert "nats refused the credentials (authorization violation)" in verdict(done.stderr)
    output = gateway.output() + (worker.output() if worker else "") + done.stderr
    assert not [seed for seed in seeds if seed in output]


class HandshakeFirstServer(NatsServer):
    """A server with `handshake_first`: its readiness probe speaks TLS before INFO too."""

    def __init__(self, *args: Any, pki: Pki, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pki = pki

    def _probe(self, timeout: float) -> str:
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        context.load_cert_chain(self.pki.client_cert, self.pki.client_key)
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
            ):
                line = sock.recv(65536).partition(b"\r\n")[0]
        except OSError as exc:
            return f"connect: {exc}"
        if not line.startswith(b"INFO "):
            return f"unexpected greeting {line[:80]!r}"
        info = json.loads(line[5:])
        return "" if info.get("server_name") == self.name and info.get("jetstream") else "not yet"


async def test_gateway_with_tls_handshake_first(tmp_path: Path, pki: Pki) -> None:
    block = pki.server_block().replace("verify: true", "verify: true\n  handshake_first: true")
    config = block + users_block(user("gateway"))
    with HandshakeFirstServer(tmp_path / "nats-hf", config=config, pki=pki) as server:
        env = {**gateway_env(server, pki), "JETGATE_NATS_TLS_HANDSHAKE_FIRST": "true"}
        gateway = start_gateway(tmp_path, env)
        try:
            await wait_serving(gateway)
            async with grpc.aio.insecure_channel(gateway.address) as channel:
                stub = gateway_pb2_grpc.EventGatewayStub(channel)
                assert (await stub.Publish(request("o-6"), timeout=10)).sequence > 0
        finally:
            assert gateway.stop() == 0
        # Without it the client waits for an INFO that never comes: exit code 1.
        del env["JETGATE_NATS_TLS_HANDSHAKE_FIRST"]
        done = run(["dlq", "list", "--group", "recorder"], env)
    assert done.returncode == 1, done.stderr
    # The server sends nothing before the TLS handshake: the client times out waiting.
    assert "cannot reach nats at tls://" in verdict(done.stderr), done.stderr
    assert PASSWORD not in done.stdout + done.stderr


async def test_up_hands_its_nats_settings_to_its_workers_in_their_environment(
    tmp_path: Path, tls_server: NatsServer, pki: Pki
) -> None:
    """Settings given as flags (and the password as a variable) reach the demo workers."""
    tls_flags = [
        *("--nats-url", tls_url(tls_server), "--nats-user", "app"),
        *("--nats-tls-ca-file", str(pki.ca), "--nats-tls-cert-file", str(pki.client_cert)),
        *("--nats-tls-key-file", str(pki.client_key)),
    ]
    proc = await start_up(tmp_path, env={"JETGATE_NATS_PASSWORD": PASSWORD}, args=tls_flags)
    assert proc.stdout is not None
    rest: asyncio.Task[str] | None = None
    try:
        banner = await read_banner(proc.stdout)
        rest = asyncio.create_task(read_rest(proc.stdout))
        address = re.search(r"listening on (127\.0\.0\.1:\d+)", banner)
        assert address, banner
        worker_pids = [int(pid) for pid in re.findall(r"consumers\.demo:\w+  pid (\d+)", banner)]
        assert len(worker_pids) == 2, banner
        for pid in [proc.pid, *worker_pids]:
            assert PASSWORD not in _cmdline(pid)
        async with grpc.aio.insecure_channel(address.group(1)) as channel:
            await gateway_pb2_grpc.EventGatewayStub(channel).Publish(request("o-7"), timeout=10)
        settings = nats_options.NatsOptions(
            servers=(tls_url(tls_server),),
            user="app",
            password=PASSWORD,
            tls_ca_file=str(pki.ca),
            tls_cert_file=str(pki.client_cert),
            tls_key_file=str(pki.client_key),
        )
        nc = await nats.connect(**nats_options.connect_kwargs(settings))
        try:
            js = nc.jetstream()

            async def shipped() -> bool:  # billing paid it, shipping shipped it: both workers
                await js.get_last_msg("ORDERS", "orders.OrderShipped.o-7")
                return True

            assert await eventually(shipped, within=30, retry_on=(AssertionError, NotFoundError))
        finally:
            await nc.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), WAIT) == 0
        output = banner + await asyncio.wait_for(rest, WAIT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if rest is not None and not rest.done():
            await asyncio.wait_for(rest, WAIT)
    assert PASSWORD not in output


async def test_gateway_with_several_servers_uses_the_one_that_answers(
    gateway_config: GatewayConfig, nats_url: str
) -> None:
    # Nothing listens on port 1; nats-py tries the servers in random order.
    config = dataclasses.replace(gateway_config, nats_url=f"nats://127.0.0.1:1,{nats_url}")
    async with serving(config) as gateway, grpc.aio.insecure_channel(gateway.address) as channel:
        stub = gateway_pb2_grpc.EventGatewayStub(channel)
        assert (await stub.Publish(request("o-8"), timeout=10)).sequence > 0
