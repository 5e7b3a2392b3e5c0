"""The secured gateway of `make bench`: TLS and a bearer API token checked against a policy.

`make(workdir)` writes a CA and the server's certificate (trustme), a token file holding the
hash of a fresh API token and a policy granting it every event type; `args()` are the
`jetgate serve` flags that use them. The `-tls-token` scenarios run the plaintext scenarios'
load against this second gateway process, each call carrying `authorization: Bearer`, so
their ratio to the plaintext rows of the same run is the cost of TLS, authentication and the
per-event policy check (and of the `Jetgate-Principal` header stored with each event).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import trustme

from gateway.auth.tokens import hash_token, new_token

SERVER_NAME = "localhost"
PRINCIPAL = "bench"


@dataclass(frozen=True)
class SecureSetup:
    """Files of the secured gateway and what a client needs to call it."""

    dir: Path
    ca_pem: bytes
    token: str

    def args(self) -> list[str]:
        """`jetgate serve` flags: TLS with the certificate, the token file, the policy."""
        return [
            "--tls-cert",
            str(self.dir / "server.pem"),
            "--tls-key",
            str(self.dir / "server.key"),
            "--auth-tokens-file",
            str(self.dir / "tokens.toml"),
            "--auth-policy-file",
            str(self.dir / "policy.toml"),
        ]

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata carrying the token."""
        return (("authorization", f"Bearer {self.token}"),)

    def channel(self, address: str) -> grpc.aio.Channel:
        """A TLS channel to `address` trusting the setup's CA."""
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca_pem)
        options = (("grpc.ssl_target_name_override", SERVER_NAME),)
        return grpc.aio.secure_channel(address, creds, options=options)


def make(directory: Path) -> SecureSetup:
    """Write the certificate, key, token file and policy into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert(SERVER_NAME, "127.0.0.1")
    (directory / "server.pem").write_bytes(b"".join(b.bytes() for b in server.cert_chain_pems))
    (directory / "server.key").write_bytes(server.private_key_pem.bytes())
    token = new_token()
    (directory / "tokens.toml").write_text(
        f'[[tokens]]\nname = "{PRINCIPAL}"\nsha256 = "{hash_token(token)}"\n'
    )
    (directory / "policy.toml").write_text(
        f'[[grants]]\nprincipals = ["{PRINCIPAL}"]\npublish = ["*"]\n'
    )
    return SecureSetup(dir=directory, ca_pem=ca.cert_pem.bytes(), token=token)
