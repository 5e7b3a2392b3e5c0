"""The principal of an mTLS client: read from its certificate, in a configured preference.

By the time a call runs, grpc has verified the client certificate against the client CA
(the handshake refuses any other). The name comes from the verified leaf certificate that
grpc puts in the auth context (`x509_pem_cert`), parsed with `cryptography`: grpc's
`x509_subject_alternative_name` entries mix URIs, DNS names, emails and IPs without saying
which is which (a DNS name must not pass for a SPIFFE id), and its typed keys (`peer_uri`,
`peer_dns`) depend on the grpc version; the certificate itself says exactly what it holds.

Sources, tried in order (default: URI SAN, then DNS SAN, then CN): `uri` (a SPIFFE id such
as spiffe://example.org/ns/prod/sa/orders; `uri_prefix` restricts which URIs count), `dns`
and `cn`. A certificate with none of them is refused (CERTIFICATE_IDENTITY_MISSING). Roles
are not read from certificates: the policy grants by principal name.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.auth.principal import AuthError, AuthMethod, Principal, Reason

PEM_CERT_KEY = "x509_pem_cert"


class IdentitySource(enum.StrEnum):
    """Where in the client certificate the principal name is read."""

    URI = "uri"
    DNS = "dns"
    CN = "cn"


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerIdentitySettings:
    """Which certificate fields name the principal, in order of preference."""

    sources: tuple[IdentitySource, ...] = (
        IdentitySource.URI,
        IdentitySource.DNS,
        IdentitySource.CN,
    )
    uri_prefix: str = ""

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("peer identity: at least one source (uri, dns, cn)")
        if len(set(self.sources)) != len(self.sources):
            raise ValueError("peer identity: a source is listed twice")


def _names(cert: x509.Certificate, source: IdentitySource, uri_prefix: str) -> list[str]:
    if source is IdentitySource.CN:
        return [
            str(attr.value) for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    if source is IdentitySource.URI:
        return [
            uri
            for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
            if uri.startswith(uri_prefix)
        ]
    return list(san.get_values_for_type(x509.DNSName))


def peer_principal(
    auth_context: Mapping[str, Iterable[bytes]], settings: PeerIdentitySettings
) -> Principal | None:
    """The principal of the client certificate; None when the peer sent none.

    Raises AuthError(CERTIFICATE_IDENTITY_MISSING) when the certificate names no identity
    of the configured sources.
    """
    pems = list(auth_context.get(PEM_CERT_KEY, ()))
    if not pems:
        return None
    try:
        cert = x509.load_pem_x509_certificate(pems[0])
    except ValueError as exc:  # grpc verified it; still, no input may crash the call
        raise AuthError(
            Reason.CERTIFICATE_IDENTITY_MISSING, "the client certificate cannot be read"
        ) from exc
    for source in settings.sources:
        names = [name for name in _names(cert, source, settings.uri_prefix) if name]
        if names:
            return Principal(name=names[0], method=AuthMethod.MTLS)
    wanted = ", ".join(source.value for source in settings.sources)
    raise AuthError(
        Reason.CERTIFICATE_IDENTITY_MISSING,
        f"the client certificate names no identity of the accepted kinds ({wanted})",
    )
