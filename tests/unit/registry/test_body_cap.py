"""Every body read is capped on the wire and after decoding: compressed bodies are read, bombs refused."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import httpx

from audit.adapters.registry.manifest import MAX_MANIFEST_BYTES
from audit.models import Digest, ImageRef, LiveStatus, MediaType

from .fakes import REALM, REGISTRY, FakeRegistry, image_manifest, make_client

REPO = "team/app"
BODY = image_manifest("a")
DIGEST = Digest.of(BODY)


def ref() -> ImageRef:
    return ImageRef.parse(f"{REGISTRY}/{REPO}:1.0")


def serving(encoding: str, payload: bytes, *, status: int = 200, digest: Digest | None = DIGEST) -> FakeRegistry:
    registry = FakeRegistry()

    def compressed(request: httpx.Request) -> httpx.Response | None:
        if request.url.host != REGISTRY:
            return None  # the token server
        headers = {"Content-Type": MediaType.OCI_MANIFEST.value, "Content-Encoding": encoding}
        if status == 401:
            headers["WWW-Authenticate"] = f'Bearer realm="{REALM}",service="{REGISTRY}"'
        elif request.method == "HEAD":
            return httpx.Response(200, headers=headers)  # no digest header: a GET follows
        # a stream, as from the wire: `content=` would make httpx decode it here, in the fake
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(payload))

    registry.hooks.append(compressed)
    return registry


async def test_a_gzip_manifest_is_decoded_and_verified() -> None:
    async with make_client(serving("gzip", gzip.compress(BODY))) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND
    assert observation.live_digest == DIGEST


async def test_a_deflate_manifest_is_decoded_too() -> None:
    async with make_client(serving("deflate", zlib.compress(BODY))) as client:
        observation = await client.observe(ref())
    assert observation.live_digest == DIGEST


async def test_a_gzip_bomb_is_refused_without_being_inflated() -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)  # 64 MiB in about 64 KiB
    registry = serving("gzip", bomb)
    tracemalloc.start()
    try:
        async with make_client(registry) as client:
            observation = await client.observe(ref())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "manifest larger than 4 MiB"
    assert peak < 3 * MAX_MANIFEST_BYTES  # never the 64 MiB the bomb would inflate to


async def test_an_encoding_that_cannot_be_bounded_is_refused() -> None:
    async with make_client(serving("br", b"\x8b\x00\x80" + BODY)) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "malformed response encoding"


async def test_a_huge_401_body_read_inside_the_auth_flow_is_capped() -> None:
    async with make_client(serving("identity", b"x" * (8 * 1024 * 1024), status=401)) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "response too large"
