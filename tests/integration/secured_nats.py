"""Helpers for the tests against a secured nats-server: certificates (trustme), nkey users,
the server's config, and `jetgate serve` / `jetgate consume` run as real processes whose
output goes to a file (so that a test can scan it for secrets)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import nkeys
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nacl.signing import SigningKey

from gateway.embedded import die_with_parent, free_port
from tests.integration.jetgate_up import REPO, WAIT, jetgate
from tests.support.eventually import eventually

PASSWORD = "pa55-w0rd-8813-secret"
SERVICE = "jetgate.v1.EventGateway"


@dataclass(frozen=True, slots=True, kw_only=True)
class Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @staticmethod
    def make(directory: Path) -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        client = ca.issue_cert("jetgate-client.example")
        pki = Pki(
            ca=directory / "ca.pem",
            server_cert=directory / "server.pem",
            server_key=directory / "server.key",
            client_cert=directory / "client.pem",
            client_key=directory / "client.key",
        )
        ca.cert_pem.write_to_path(str(pki.ca))
        server.cert_chain_pems[0].write_to_path(str(pki.server_cert))
        server.private_key_pem.write_to_path(str(pki.server_key))
        client.cert_chain_pems[0].write_to_path(str(pki.client_cert))
        client.private_key_pem.write_to_path(str(pki.client_key))
        return pki

    def server_block(self) -> str:
        """nats-server `tls` block: its certificate, client certificates required."""
        return (
            f"tls {{\n  cert_file: {json.dumps(str(self.server_cert))}\n"
            f"  key_file: {json.dumps(str(self.server_key))}\n"
            f"  ca_file: {json.dumps(str(self.ca))}\n  verify: true\n}}\n"
        )

    def client_env(self) -> dict[str, str]:
        """The `JETGATE_NATS_TLS_*` variables of a client presenting its certificate."""
        return {
            "JETGATE_NATS_TLS_CA_FILE": str(self.ca),
            "JETGATE_NATS_TLS_CERT_FILE": str(self.client_cert),
            "JETGATE_NATS_TLS_KEY_FILE": str(self.client_key),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class NkeyUser:
    """A generated nkey user: its seed (a secret, also written to `seed_file`), public key."""

    seed: str
    public: str
    seed_file: Path

    @staticmethod
    def make(path: Path) -> NkeyUser:
        seed = nkeys.encode_seed(bytes(SigningKey.generate()), nkeys.PREFIX_BYTE_USER)
        path.touch(mode=0o600)
        path.write_bytes(seed)
        public = nkeys.from_seed(bytearray(seed)).public_key.decode()
        return NkeyUser(seed=seed.decode(), public=public, seed_file=path)


def user(name: str, *, publish_deny: Sequence[str] = ()) -> str:
    """A password user of the `authorization.users` list (password PASSWORD)."""
    return f"{{user: {json.dumps(name)}, password: {json.dumps(PASSWORD)}{_perms(publish_deny)}}}"


def nkey_user(key: NkeyUser, *, publish_deny: Sequence[str] = ()) -> str:
    """An nkey user of the `authorization.users` list."""
    return f"{{nkey: {json.dumps(key.public)}{_perms(publish_deny)}}}"


def _perms(deny: Sequence[str]) -> str:
    if not deny:
        return ""
    return f', permissions: {{publish: {{allow: [">"], deny: {json.dumps(list(deny))}}}}}'


def users_block(*users: str) -> str:
    return "authorization {\n  users = [\n" + "\n".join(f"    {u}" for u in users) + "\n  ]\n}\n"


def clean_env(env: Mapping[str, str]) -> dict[str, str]:
    """This environment without `JETGATE_*`/`OTEL_*`, warnings as errors, plus `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JETGATE_", "OTEL_"))}
    clean["PYTHONWARNINGS"] = "error"
    return {**clean, **env}


@dataclass
class Started:
    """A `jetgate` process started by a test: its output file and /metrics address."""

    proc: subprocess.Popen[bytes]
    log: Path
    metrics: str
    address: str = ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def cmdline(self) -> str:
        return Path(f"/proc/{self.proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()

    def stop(self) -> int:
        """SIGTERM (by pid), wait; SIGKILL when it does not stop."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(WAIT)


def start(workdir: Path, name: str, args: Sequence[str], env: Mapping[str, str]) -> Started:
    """`jetgate ARGS` with `--metrics-listen` on a free port, output to `workdir/name.log`."""
    metrics = f"127.0.0.1:{free_port()}"
    log = workdir / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*die_with_parent(), jetgate(), *args, "--metrics-listen", metrics],
            cwd=REPO,
            env=clean_env(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Started(proc=proc, log=log, metrics=metrics)


def start_gateway(workdir: Path, env: Mapping[str, str], name: str = "gateway") -> Started:
    """`jetgate serve` with the demo config on a free port (NATS settings in `env`)."""
    address = f"127.0.0.1:{free_port()}"
    started = start(
        workdir,
        name,
        ["serve", "--config", str(REPO / "jetgate.toml"), "--listen", address],
        env,
    )
    started.address = address
    return started


def run(args: Sequence[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """`jetgate ARGS` to its end (it is expected to fail at start-up)."""
    return subprocess.run(
        [jetgate(), *args, *(["--metrics-listen", ""] if args[0] != "dlq" else [])],
        cwd=REPO,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
        stdin=subprocess.DEVNULL,
        check=False,
    )


async def wait_serving(gateway: Started) -> None:
    """Until the gateway's health says SERVING (fails when the process exits first)."""
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def serving() -> bool:
            assert gateway.proc.poll() is None, gateway.output()
            try:
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service=SERVICE), timeout=1
                )
            except grpc.aio.AioRpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        await eventually(serving, within=WAIT, what="the gateway serves")


async def scrape(address: str) -> str:
    """The text of `http://address/metrics`."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
        await writer.drain()
        return (await reader.read()).decode(errors="replace")
    finally:
        writer.close()
        await writer.wait_closed()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(issuer_seed: bytes, subject: str, name: str, nats: dict[str, object]) -> str:
    """A NATS JWT (v2, ed25519-nkey) for `subject`, signed by the key of `issuer_seed`."""
    issuer = nkeys.from_seed(bytearray(issuer_seed))
    claims: dict[str, object] = {
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    digest = hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = issuer.sign(f"{header}.{body}".encode())
    return f"{header}.{body}.{_b64(signature)}"


def _seed(prefix: int) -> bytes:
    return bytes(nkeys.encode_seed(bytes(SigningKey.generate()), prefix))


def _public(seed: bytes) -> str:
    return str(nkeys.from_seed(bytearray(seed)).public_key.decode())


@dataclass(frozen=True, slots=True, kw_only=True)
class Operator:
    """Decentralized auth without the nsc tool: an operator, one account with JetStream,
    its users; `server_block()` is the nats-server config, `creds()` writes a .creds file."""

    operator_seed: bytes
    account_seed: bytes
    system_seed: bytes  # JetStream needs a system account

    @staticmethod
    def make() -> Operator:
        return Operator(
            operator_seed=_seed(nkeys.PREFIX_BYTE_OPERATOR),
            account_seed=_seed(nkeys.PREFIX_BYTE_ACCOUNT),
            system_seed=_seed(nkeys.PREFIX_BYTE_ACCOUNT),
        )

    def server_block(self) -> str:
        operator = _public(self.operator_seed)
        account = _public(self.account_seed)
        limits = dict.fromkeys(
            ["subs", "data", "payload", "imports", "exports", "conn", "leaf"], -1
        ) | dict.fromkeys(["mem_storage", "disk_storage", "streams", "consumer"], -1)
        operator_jwt = _jwt(self.operator_seed, operator, "jetgate-tests", {"type": "operator"})
        account_jwt = _jwt(
            self.operator_seed,
            account,
            "APP",
            {"type": "account", "limits": {**limits, "wildcards": True}},
        )
        system = _public(self.system_seed)
        system_jwt = _jwt(self.operator_seed, system, "SYS", {"type": "account"})
        return (
            f"operator: {operator_jwt}\nsystem_account: {system}\nresolver: MEMORY\n"
            f"resolver_preload: {{\n  {account}: {account_jwt}\n  {system}: {system_jwt}\n}}\n"
        )

    def creds(self, path: Path, name: str) -> str:
        """Write a user's .creds file (mode 0600) to `path`; returns the user's seed."""
        seed = _seed(nkeys.PREFIX_BYTE_USER)
        user_jwt = _jwt(
            self.account_seed,
            _public(seed),
            name,
            {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1},
        )
        path.touch(mode=0o600)
        path.write_text(
            f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{seed.decode()}\n------END USER NKEY SEED------\n"
        )
        return seed.decode()
