"""TLS server credentials from PEM files: TLS, or mTLS when a client CA is given.

`TlsSettings` names the files; `read_material` reads and checks them (the chain parses, the
key parses and belongs to the leaf certificate, the client CA parses), so a mismatch is an
error naming the file at load time instead of a failed handshake later. With a client CA the
client certificate is required (mTLS): a client without one, or with one from another CA,
is refused during the handshake, before any RPC.

Rotation: `ReloadingServerCredentials` builds `grpc.dynamic_ssl_server_credentials`. grpc
calls its fetcher before every new handshake, on a grpc-core thread (also under grpc.aio:
the fetcher is a plain thread-safe function that never touches the event loop). The fetcher
returns None (keep) unless the files changed (see `gateway.auth.files`), so established
connections keep their session and new ones get the new certificate. A broken rotation is
logged and the previous certificate keeps being served. Whether the client certificate is
required is fixed when the credentials are made.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PublicKeyTypes,
)

from gateway.auth.files import ReloadingFiles

log = logging.getLogger(__name__)


class TlsError(ValueError):
    """A certificate, key or CA file that cannot be used (the message names the file)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    """The PEM files of the listener; `client_ca_file` set means mTLS (client cert required)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    def __post_init__(self) -> None:
        for name in ("cert_file", "key_file", "client_ca_file"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, Path) or not str(value)):
                raise TlsError(f"{name} must be a file path")

    @property
    def mutual(self) -> bool:
        """True when clients must present a certificate signed by the client CA."""
        return self.client_ca_file is not None

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file the credentials are made of (what a reload watches)."""
        extra = () if self.client_ca_file is None else (self.client_ca_file,)
        return (self.cert_file, self.key_file, *extra)


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsMaterial:
    """The checked PEM bytes of a `TlsSettings`."""

    chain: bytes
    key: bytes
    client_ca: bytes | None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"{path}: cannot be read ({exc.strerror})") from exc


def _certificates(path: Path, data: bytes) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TlsError(f"{path}: not a PEM certificate file") from exc
    return certs


def _public_der(key: PublicKeyTypes | CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def read_material(settings: TlsSettings) -> TlsMaterial:
    """Read and check the files of `settings`; raises TlsError naming the file at fault."""
    chain = _read(settings.cert_file)
    key = _read(settings.key_file)
    leaf = _certificates(settings.cert_file, chain)[0]
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:
        # The message of cryptography is not quoted: it could describe the key's bytes.
        raise TlsError(f"{settings.key_file}: not an unencrypted PEM private key") from exc
    if _public_der(private.public_key()) != _public_der(leaf.public_key()):
        raise TlsError(
            f"{settings.key_file}: the key does not belong to the first certificate of "
            f"{settings.cert_file}"
        )
    client_ca = None
    if settings.client_ca_file is not None:
        client_ca = _read(settings.client_ca_file)
        _certificates(settings.client_ca_file, client_ca)
    return TlsMaterial(chain=chain, key=key, client_ca=client_ca)


def server_credentials(settings: TlsSettings) -> grpc.ServerCredentials:
    """Fixed credentials, read once (no rotation)."""
    material = read_material(settings)
    return grpc.ssl_server_credentials(
        [(material.key, material.chain)],
        root_certificates=material.client_ca,
        require_client_auth=settings.mutual,
    )


def _configuration(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.key, material.chain)], root_certificates=material.client_ca
    )


class ReloadingServerCredentials:
    """Server credentials whose certificate, key and client CA follow their files.

    Construct (reads and checks the files: raises TlsError), then pass `credentials()` to
    `server.add_secure_port`. `refresh()` checks the files at once (e.g. on SIGHUP).
    """

    def __init__(self, settings: TlsSettings, *, min_interval: float = 1.0) -> None:
        self.settings = settings
        self._files = ReloadingFiles(
            settings.files,
            lambda: read_material(settings),
            what="TLS certificate",
            min_interval=min_interval,
        )
        self._served = self._files.value

    def credentials(self) -> grpc.ServerCredentials:
        """Dynamic credentials for `add_secure_port`."""
        # grpc documents None from the fetcher as "keep the current configuration"; the
        # stubs type the fetcher without it.
        fetch = cast("Callable[[], grpc.ServerCertificateConfiguration]", self._fetch)
        return grpc.dynamic_ssl_server_credentials(
            _configuration(self._served), fetch, require_client_authentication=self.settings.mutual
        )

    def refresh(self) -> bool:
        """Re-read changed files now; True when new material was loaded."""
        return self._files.refresh()

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Runs on a grpc-core thread before each handshake: it must never raise.
        try:
            material = self._files.current()
            if material is self._served:
                return None
            self._served = material
            return _configuration(material)
        except Exception:
            log.exception("TLS certificate: keeping the current one")
            return None
