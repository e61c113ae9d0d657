"""The TLS context: verification on, a private CA added to the public trust, SSL_CERT_FILE honoured."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from audit.adapters.registry import RegistryClient, RegistrySettings
from audit.adapters.registry.tls import build_ssl_context
from audit.errors import ConfigError


def _subjects(context: ssl.SSLContext) -> set[str]:
    names = set()
    for cert in context.get_ca_certs():
        subject: Any = cert["subject"]
        for rdn in subject:
            for key, value in rdn:
                if key in ("organizationName", "commonName"):
                    names.add(value)
    return names


def test_default_context_verifies_and_trusts_public_roots() -> None:
    context = build_ssl_context(environ={})
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.cert_store_stats()["x509_ca"] > 50  # certifi at least


def test_ca_file_is_added_not_replacing(tmp_path: Path) -> None:
    ca = trustme.CA(organization_name="digest-audit test CA")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    baseline = build_ssl_context(environ={}).cert_store_stats()["x509_ca"]
    context = build_ssl_context(ca_file, environ={})
    assert "digest-audit test CA" in _subjects(context)
    assert context.cert_store_stats()["x509_ca"] == baseline + 1


def test_ssl_cert_file_is_honoured(tmp_path: Path) -> None:
    ca = trustme.CA(organization_name="from SSL_CERT_FILE")
    bundle = tmp_path / "bundle.pem"
    ca.cert_pem.write_to_path(str(bundle))
    context = build_ssl_context(environ={"SSL_CERT_FILE": str(bundle)})
    assert "from SSL_CERT_FILE" in _subjects(context)


def test_unreadable_ca_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError):
        build_ssl_context(bad, environ={})
    with pytest.raises(ConfigError):
        RegistryClient(RegistrySettings(ca_file=tmp_path / "missing.pem"))


def test_settings_validation() -> None:
    with pytest.raises(ConfigError):
        RegistrySettings(concurrency=0)
    with pytest.raises(ConfigError):
        RegistrySettings(max_attempts=0)
    with pytest.raises(ConfigError):
        RegistrySettings(timeout=0)
