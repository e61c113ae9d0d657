"""A throwaway certificate authority (trustme) so local registries and token servers can speak real TLS."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

LOOPBACK_IDENTITIES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class ServerCertificate:
    """PEM files a server presents: the leaf certificate (with its chain) and its private key."""

    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


class LocalCA:
    """A test CA written to `directory/ca.pem`; clients trust it by passing `ca_file`."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._directory = directory
        self._ca = trustme.CA(organization_name="digest-audit test CA")
        self.ca_file = directory / "ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_file))

    def issue_server_certificate(
        self, name: str, identities: tuple[str, ...] = LOOPBACK_IDENTITIES
    ) -> ServerCertificate:
        leaf = self._ca.issue_cert(*identities)
        cert_file = self._directory / f"{name}.crt"
        key_file = self._directory / f"{name}.key"
        # Leaf first, then the CA: Go and OpenSSL both want the served chain in that order.
        cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key_file))
        key_file.chmod(0o600)
        return ServerCertificate(cert_file=cert_file, key_file=key_file)

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def client_verify(ca_file: Path | None) -> ssl.SSLContext | bool:
    """What to pass as httpx's `verify=`: a context trusting `ca_file`, or default verification."""
    if ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(ca_file))
