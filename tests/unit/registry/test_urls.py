"""Manifest URLs are built without httpx's parser: they must be exactly what httpx would build from the text."""

from __future__ import annotations

import httpx
from hypothesis import given
from hypothesis import strategies as st

from audit.adapters.registry import RegistryClient, RegistrySettings
from audit.adapters.registry.client import _manifest_url

COMPONENT = r"[a-z0-9]{1,8}(?:(?:\.|_|__|-+)[a-z0-9]{1,8}){0,2}"
TAG = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,40}"
REGISTRIES = ["registry.example", "registry.example:5000", "127.0.0.1:5000", "[::1]:5000", "localhost", "ghcr.io"]

repositories = st.lists(st.from_regex(COMPONENT, fullmatch=True), min_size=1, max_size=4).map("/".join)
digests = st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda hex_part: f"sha256:{hex_part}")
manifest_references = st.from_regex(TAG, fullmatch=True) | digests
CLIENT = RegistryClient(RegistrySettings(insecure_registries=frozenset({"127.0.0.1", "localhost", "[::1]"})))


@given(st.sampled_from(REGISTRIES), repositories, manifest_references)
def test_a_manifest_url_is_the_one_httpx_parses_from_its_text(registry: str, repository: str, reference: str) -> None:
    endpoint = CLIENT._endpoint(registry)
    fast = _manifest_url(endpoint, repository, reference)
    parsed = httpx.URL(f"{endpoint.base}/v2/{repository}/manifests/{reference}")
    assert fast == parsed
    assert (str(fast), fast.raw_path, fast.netloc, fast.host, fast.port) == (
        str(parsed),
        parsed.raw_path,
        parsed.netloc,
        parsed.host,
        parsed.port,
    )


@given(st.sampled_from(REGISTRIES), repositories)
def test_a_request_carries_the_host_header_httpx_would_write(registry: str, repository: str) -> None:
    url = _manifest_url(CLIENT._endpoint(registry), repository, "v1")
    request = CLIENT._new_request("HEAD", url, "application/json", 1024)
    expected = httpx.Request("HEAD", str(url), headers={"Accept": "application/json"})
    assert request.headers["host"] == expected.headers["host"]
    assert request.headers["accept"] == "application/json"
    assert isinstance(request.stream, httpx.ByteStream)
    assert b"".join(request.stream) == b""
    assert "content-length" not in request.headers
