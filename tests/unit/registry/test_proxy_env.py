"""Proxies from the environment: read once into httpx mounts (httpx ignores them when a transport is given)."""

from __future__ import annotations

import httpx
import pytest

from audit.adapters.registry.transport import Routes, environment_mounts

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


# -- routing: httpx's mount rules, decided once per origin


def named(name: str) -> httpx.AsyncBaseTransport:
    transport = httpx.MockTransport(lambda r: httpx.Response(200))
    transport.name = name  # type: ignore[attr-defined]
    return transport


ROUTES_MOUNTS: dict[str, str | None] = {
    "https://": "proxy",
    "https://registry.internal": "direct",
    "https://*.registry.internal": "direct",
    "https://10.0.0.5": "direct",
    "https://[::1]": "direct",
    "all://pinned.example:8443": "pinned-port",
    "all://*mirror.example": "mirror",
    "http://plain.example": None,  # None: the default transport, as in httpx
}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://registry.internal/v2/", "direct"),
        ("https://a.b.registry.internal/v2/", "direct"),
        ("https://xregistry.internal/v2/", "proxy"),  # a suffix of the name is not a subdomain
        ("https://registry.internal.evil/v2/", "proxy"),
        ("https://10.0.0.5:5000/v2/", "direct"),
        ("https://[::1]:5000/v2/", "direct"),
        ("https://ghcr.io/v2/", "proxy"),
        ("http://ghcr.io/v2/", "default"),
        ("https://pinned.example:8443/v2/", "pinned-port"),
        ("http://pinned.example:8443/v2/", "pinned-port"),
        ("https://pinned.example/v2/", "proxy"),
        ("https://mirror.example/v2/", "mirror"),
        ("https://eu.mirror.example/v2/", "mirror"),
        ("http://plain.example/v2/", "default"),
    ],
)
def test_routes_pick_the_transport_httpx_mounts_would(url: str, expected: str) -> None:
    routes = Routes(
        named("default"), {pattern: named(name) if name else None for pattern, name in ROUTES_MOUNTS.items()}
    )
    assert routes.transport_for(httpx.URL(url)).name == expected  # type: ignore[attr-defined]
    assert routes.transport_for(httpx.URL(url)).name == expected  # type: ignore[attr-defined]  # cached per origin


async def test_routes_close_each_transport_once() -> None:
    closed: list[str] = []

    class Closing(httpx.AsyncBaseTransport):
        def __init__(self, name: str) -> None:
            self.name = name

        async def aclose(self) -> None:
            closed.append(self.name)

    direct, proxy = Closing("direct"), Closing("proxy")
    routes = Routes(direct, {"https://": proxy, "https://a.example": direct, "https://*.a.example": direct})
    await routes.aclose()
    assert sorted(closed) == ["direct", "proxy"]
