"""The real `jetgate serve` refuses an unsafe or unusable listener setup with exit code 2
and a message saying why (before it connects to NATS or listens)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import grpc
import pytest

from jetgate.v1 import gateway_pb2
from tests.gateway.secure_serving import SERVER_NAME
from tests.integration.conftest import REPO, request
from tests.integration.jetgate_up import jetgate
from tests.integration.secure import API_TOKEN, SecureFiles, bearer

WAIT = 60.0


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JETGATE_", "OTEL_"))}
    return subprocess.run(
        [
            jetgate(),
            "serve",
            "--config",
            str(REPO / "jetgate.toml"),
            # Nothing listens there: every case must stop before connecting.
            "--nats-url",
            "nats://127.0.0.1:1",
            "--metrics-listen",
            "",
            *args,
        ],
        env={**clean, "PYTHONWARNINGS": "error", **(env or {})},
        capture_output=True,
        text=True,
        timeout=WAIT,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.parametrize("how", ["flag", "variable"])
def test_plaintext_on_a_non_loopback_address_is_refused(how: str) -> None:
    if how == "flag":
        done = _serve("--listen", "0.0.0.0:0")
    else:
        done = _serve(env={"JETGATE_LISTEN": "0.0.0.0:0"})
    assert done.returncode == 2, done.stderr
    assert "TLS is off" in done.stderr
    assert "--insecure" in done.stderr
    assert "Traceback" not in done.stderr


def test_auth_without_a_policy_is_refused(tmp_path: Path) -> None:
    files = SecureFiles.make(tmp_path)
    done = _serve("--listen", "127.0.0.1:0", "--auth-tokens-file", str(files.dir / "tokens.toml"))
    assert done.returncode == 2, done.stderr
    assert "policy_file" in done.stderr


@pytest.mark.parametrize("broken", ["policy", "key", "missing-cert"])
def test_an_unusable_security_file_is_refused_naming_it(tmp_path: Path, broken: str) -> None:
    files = SecureFiles.make(tmp_path)
    args = [
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(tmp_path / "server.pem"),
        "--tls-key",
        str(tmp_path / "server.key"),
        "--auth-tokens-file",
        str(tmp_path / "tokens.toml"),
        "--auth-policy-file",
        str(tmp_path / "policy.toml"),
    ]
    named = {
        "policy": tmp_path / "policy.toml",
        "key": tmp_path / "server.key",
        "missing-cert": tmp_path / "server.pem",
    }[broken]
    if broken == "missing-cert":
        named.unlink()
    else:
        named.write_text("[[grants]]\nnope = 1\n" if broken == "policy" else "not a key")
    done = _serve(*args)
    assert done.returncode == 2, done.stderr
    assert str(named) in done.stderr
    assert files.client_key.decode() not in done.stderr


def test_a_secured_serve_says_so_and_stops_cleanly_on_sighup_then_sigterm(
    tmp_path: Path, nats_url: str
) -> None:
    SecureFiles.make(tmp_path)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JETGATE_", "OTEL_"))}
    env = {
        **clean,
        "PYTHONWARNINGS": "error",
        "JETGATE_TLS_CERT": str(tmp_path / "server.pem"),
        "JETGATE_TLS_KEY": str(tmp_path / "server.key"),
        "JETGATE_AUTH_TOKENS_FILE": str(tmp_path / "tokens.toml"),
        "JETGATE_AUTH_POLICY_FILE": str(tmp_path / "policy.toml"),
    }
    argv = ["serve", "--config", str(REPO / "jetgate.toml"), "--listen", "127.0.0.1:0"]
    argv += ["--nats-url", nats_url, "--metrics-listen", ""]
    proc = subprocess.Popen(
        [jetgate(), *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # ends at EOF if it dies: the assert below says why
            lines.append(line)
            if "grpcurl " in line:
                break
        banner = "".join(lines)
        assert "gRPC security: TLS, callers authenticated" in banner, banner
        assert '-cacert CA.pem -H "authorization: Bearer $TOKEN"' in banner
        assert API_TOKEN not in banner
        address = banner.split("listening on ", 1)[1].split()[0]
        assert _publish(tmp_path, address, API_TOKEN) == grpc.StatusCode.OK
        wrong = API_TOKEN[:-4] + "XXXX"
        assert _publish(tmp_path, address, wrong) == grpc.StatusCode.UNAUTHENTICATED
        proc.send_signal(signal.SIGHUP)  # re-reads the files; must not stop the gateway
        assert _publish(tmp_path, address, API_TOKEN) == grpc.StatusCode.OK
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, banner + rest
    assert "stopped" in rest
    for secret in (API_TOKEN, wrong, API_TOKEN[:12]):
        assert secret not in banner + rest


def _publish(directory: Path, address: str, token: str) -> grpc.StatusCode:
    """Publish one OrderPlaced over TLS with `token`; the call's status."""
    creds = grpc.ssl_channel_credentials((directory / "ca.pem").read_bytes())
    options = (("grpc.ssl_target_name_override", SERVER_NAME),)
    with grpc.secure_channel(address, creds, options=options) as ch:
        publish = ch.unary_unary(
            "/jetgate.v1.EventGateway/Publish",
            request_serializer=gateway_pb2.PublishRequest.SerializeToString,
            response_deserializer=gateway_pb2.PublishResponse.FromString,
        )
        try:
            publish(request("o-1"), metadata=bearer(token), timeout=WAIT)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK
