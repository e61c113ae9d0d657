"""Pure helpers: Retry-After, back-off, Link headers, rate-limit headers, error classification."""

from __future__ import annotations

import socket
import ssl
from email.utils import formatdate

import httpx
import pytest

from audit.adapters.registry.failures import RegistryFailure
from audit.adapters.registry.manifest import error_codes, next_link, parse_digest_header, parse_rate_limit_remaining
from audit.adapters.registry.retry import Backoff, classify_transport_error, parse_retry_after
from audit.models import Digest


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("120", 120.0), (" 7 ", 7.0), (None, None), ("soon", None), ("-5", None), ("1.5", None)],
)
def test_retry_after_seconds(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, wall_now=1_000_000.0) == seconds


def test_retry_after_http_date() -> None:
    now = 1_750_000_000.0
    assert parse_retry_after(formatdate(now + 90, usegmt=True), wall_now=now) == pytest.approx(90.0)
    assert parse_retry_after(formatdate(now - 90, usegmt=True), wall_now=now) == 0.0


def test_backoff_doubles_with_jitter_and_a_ceiling() -> None:
    low, high = Backoff(0.2, lambda: 0.0), Backoff(0.2, lambda: 0.999)
    assert [low.delay(n) for n in (1, 2, 3)] == pytest.approx([0.1, 0.2, 0.4])
    assert high.delay(1) == pytest.approx(0.2 * 1.499)
    assert low.delay(30) == pytest.approx(2.5)  # capped at 5 s before jitter


@pytest.mark.parametrize(
    ("values", "target"),
    [
        (['</v2/a/tags/list?n=10&last=b>; rel="next"'], "/v2/a/tags/list?n=10&last=b"),
        (["<https://r.example/v2/a/tags/list?next_page=x>;rel=next"], "https://r.example/v2/a/tags/list?next_page=x"),
        (['<https://x/prev>; rel="prev", <https://x/next>; rel="next"'], "https://x/next"),
        (['<https://x/first>; rel="first"', '<https://x/2>; title="t"; rel="next last"'], "https://x/2"),
        (['<https://x/prev>; rel="prev"'], None),
        ([], None),
    ],
)
def test_next_link(values: list[str], target: str | None) -> None:
    assert next_link(values) == target


@pytest.mark.parametrize(("value", "remaining"), [("20;w=21600", 20), ("0", 0), (None, None), ("x;w=1", None)])
def test_rate_limit_remaining(value: str | None, remaining: int | None) -> None:
    assert parse_rate_limit_remaining(value) == remaining


@pytest.mark.parametrize(
    ("body", "codes"),
    [
        (b'{"errors":[{"code":"MANIFEST_UNKNOWN"},{"code":"name_unknown"}]}', ["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]),
        (b"<html>", []),
        (b'{"errors": "no"}', []),
        (b"[1]", []),
    ],
)
def test_error_codes(body: bytes, codes: list[str]) -> None:
    assert error_codes(body) == codes


def _chained(outer: Exception, cause: BaseException) -> Exception:
    outer.__cause__ = cause
    return outer


def _wrong_version() -> ssl.SSLError:
    error = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    error.reason = "WRONG_VERSION_NUMBER"
    return error


@pytest.mark.parametrize(
    ("exc", "reason", "retry"),
    [
        (httpx.PoolTimeout("pool"), "timeout", True),
        (TimeoutError(), "timeout", True),
        (
            _chained(httpx.ConnectError("x"), ssl.SSLCertVerificationError(1, "bad cert")),
            "tls: certificate verify failed",
            False,
        ),
        (
            httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"),
            "tls: certificate verify failed",
            False,
        ),
        (_chained(httpx.ConnectError("x"), ssl.SSLError(1, "WRONG_VERSION_NUMBER")), "tls: handshake failed", False),
        (_chained(httpx.ConnectError("x"), _wrong_version()), "tls: wrong version number", False),
        (_chained(httpx.ConnectError("x"), ConnectionRefusedError(111, "refused")), "connection refused", True),
        (_chained(httpx.ConnectError("x"), socket.gaierror(-2, "Name unknown")), "dns lookup failed", True),
        (_chained(httpx.ConnectError("x"), OSError(113, "no route to host")), "connection failed", True),
        (httpx.ConnectTimeout("x"), "timeout", True),
        (httpx.ReadTimeout("x"), "timeout", True),
        (httpx.RemoteProtocolError("server disconnected"), "connection reset", True),
        (httpx.ReadError("reset"), "connection reset", True),
        (httpx.ConnectError("[Errno -2] Name or service not known"), "dns lookup failed", True),
        (httpx.UnsupportedProtocol("ftp"), "http error (UnsupportedProtocol)", False),
    ],
)
def test_classify_transport_error(exc: Exception, reason: str, retry: bool) -> None:
    assert classify_transport_error(exc) == (reason, retry)


KNOWN = Digest.of(b"trusted")


def test_a_digest_header_that_spells_the_known_digest_is_that_object() -> None:
    assert parse_digest_header(str(KNOWN), KNOWN) is KNOWN


@pytest.mark.parametrize(
    "header",
    [f" {KNOWN} ", str(Digest.of(b"other")), f"sha512:{'a' * 128}"],
)
def test_any_other_digest_header_is_parsed_and_validated(header: str) -> None:
    parsed = parse_digest_header(header, KNOWN)
    assert parsed == Digest.parse(header)
    assert parsed is not KNOWN


@pytest.mark.parametrize("header", [f"{KNOWN}x", f"SHA256:{KNOWN.hex}", "sha256:short"])
def test_a_malformed_digest_header_is_refused_even_next_to_a_known_digest(header: str) -> None:
    with pytest.raises(RegistryFailure, match="malformed digest header"):
        parse_digest_header(header, KNOWN)
