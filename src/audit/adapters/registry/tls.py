"""What registry certificates are verified against: system store, certifi, SSL_CERT_FILE/DIR, ca_file."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path

import certifi

from audit.errors import ConfigError


def build_ssl_context(ca_file: Path | None = None, *, environ: Mapping[str, str] | None = None) -> ssl.SSLContext:
    """A verifying client context trusting the system store and certifi, plus SSL_CERT_FILE/DIR and `ca_file`.

    Everything is added, nothing replaced: a private CA for one registry must not cost the public ones.
    """
    env = os.environ if environ is None else environ
    context = ssl.create_default_context()  # system store; OpenSSL also reads SSL_CERT_FILE/DIR here
    context.load_verify_locations(cafile=certifi.where())  # a container without a system store still works
    for variable in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        location = env.get(variable)
        if location:
            try:
                if variable == "SSL_CERT_FILE":
                    context.load_verify_locations(cafile=location)
                else:
                    context.load_verify_locations(capath=location)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"cannot load CA certificates from {variable}={location}: {exc}",
                    hint=f"point {variable} at a PEM bundle or a hashed certificate directory, or unset it",
                ) from None
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the CA file {ca_file}: {exc}",
                hint="give a PEM file with the CA certificate(s) that signed the registry's certificate",
            ) from None
    return context
