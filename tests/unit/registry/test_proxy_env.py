"""Proxies from the environment: read once into httpx mounts (httpx ignores them when a transport is given)."""

from __future__ import annotations

import httpx
import pytest

from audit.adapters.registry.transport import environment_mounts

DIRECT = {
    "http": httpx.MockTransport(lambda r: httpx.Response(200)),
    "https": httpx.MockTransport(lambda r: httpx.Response(200)),
}


def proxied(scheme: str, url: str) -> httpx.AsyncBaseTransport:
    transport = httpx.MockTransport(lambda r: httpx.Response(200))
    transport.proxy = (scheme, url)  # type: ignore[attr-defined]
    return transport


def described(environ: dict[str, str]) -> dict[str, object]:
    mounts = environment_mounts(DIRECT, proxied, environ)
    names = {id(transport): f"direct-{scheme}" for scheme, transport in DIRECT.items()}
    return {pattern: getattr(transport, "proxy", None) or names[id(transport)] for pattern, transport in mounts.items()}


def test_no_proxy_variables_no_mounts() -> None:
    assert described({"PATH": "/bin"}) == {}


def test_https_proxy_and_no_proxy_hosts_in_either_case() -> None:
    assert described({"https_proxy": "proxy.corp:3128", "NO_PROXY": "registry.internal, .corp.example,10.0.0.5"}) == {
        "https://": ("https", "http://proxy.corp:3128"),
        "https://registry.internal": "direct-https",
        "https://*.registry.internal": "direct-https",
        "https://corp.example": "direct-https",
        "https://*.corp.example": "direct-https",
        "https://10.0.0.5": "direct-https",
    }


@pytest.mark.parametrize("name", ["ALL_PROXY", "all_proxy"])
def test_all_proxy_covers_both_schemes(name: str) -> None:
    assert described({name: "http://p:8080"}) == {
        "http://": ("http", "http://p:8080"),
        "https://": ("https", "http://p:8080"),
    }


def test_no_proxy_star_turns_proxies_off() -> None:
    assert described({"HTTPS_PROXY": "http://p:8080", "NO_PROXY": "*"}) == {}
