"""observe(): HEAD first, GET only when the evidence needs the bytes, and every digest header checked against them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from audit.adapters.registry import MAX_MANIFEST_BYTES, RegistryRequestError
from audit.models import MANIFEST_ACCEPT, Digest, ImageRef, LiveStatus, MediaType

from .fakes import REGISTRY, FakeRegistry, child, image_manifest, index_manifest, make_client

REPO = "team/app"


def ref(tag: str = "1.0", repository: str = REPO) -> ImageRef:
    return ImageRef.parse(f"{REGISTRY}/{repository}:{tag}")


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


async def test_header_digest_answers_with_one_head(registry: FakeRegistry) -> None:
    digest = registry.push(REPO, "1.0", image_manifest("a"))
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND
    assert observation.live_digest == digest
    assert observation.media_type == MediaType.OCI_MANIFEST.value
    assert [r.method for r in registry.requests] == ["HEAD"]
    head = registry.requests[0]
    assert head.url.path == f"/v2/{REPO}/manifests/1.0"
    assert head.headers["accept"] == MANIFEST_ACCEPT
    assert head.headers["accept-encoding"] == "identity"
    assert head.headers["user-agent"] == "digest-audit/0.1"
    assert client.stats.heads == 1
    assert client.stats.gets == 0


async def test_all_four_media_types_are_accepted(registry: FakeRegistry) -> None:
    for media_type in MediaType:
        body = index_manifest([], media_type) if media_type.is_index else image_manifest("x", media_type)
        registry.push(REPO, media_type.name.lower(), body, media_type.value)
    async with make_client(registry) as client:
        for media_type in MediaType:
            observation = await client.observe(ref(media_type.name.lower()))
            assert observation.status is LiveStatus.FOUND, observation.reason
            assert observation.media_type == media_type.value


async def test_expected_digest_that_matches_costs_exactly_one_head(registry: FakeRegistry) -> None:
    digest = registry.push(REPO, "1.0", image_manifest("a"))
    async with make_client(registry) as client:
        observation = await client.observe(ref(), expected=digest)
    assert observation.status is LiveStatus.FOUND
    assert observation.live_digest == digest
    assert observation.live_digest is digest  # a match keeps the trusted object: no second copy per tag in `run`
    assert [r.method for r in registry.requests] == ["HEAD"]


async def test_expected_digest_that_differs_is_confirmed_by_content(registry: FakeRegistry) -> None:
    trusted = Digest.of(image_manifest("old"))
    live = registry.push(REPO, "1.0", image_manifest("new"))
    async with make_client(registry) as client:
        observation = await client.observe(ref(), expected=trusted)
    assert observation.status is LiveStatus.FOUND
    assert observation.live_digest == live
    assert [r.method for r in registry.requests] == ["HEAD", "GET"]
    assert registry.requests[1].headers["accept"] == MANIFEST_ACCEPT
    assert registry.requests[1].headers["accept-encoding"] == "identity"


async def test_missing_digest_header_falls_back_to_hashing_the_body(registry: FakeRegistry) -> None:
    body = image_manifest("a")
    registry.push(REPO, "1.0", body, digest_header=None)
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND
    assert observation.live_digest == Digest.of(body)
    assert [r.method for r in registry.requests] == ["HEAD", "GET"]


async def test_missing_content_type_on_head_falls_back_to_get(registry: FakeRegistry) -> None:
    body = image_manifest("a")
    digest = registry.push(REPO, "1.0", body)

    def no_content_type(request: httpx.Request) -> httpx.Response | None:
        if request.method == "HEAD":
            return httpx.Response(200, headers={"Docker-Content-Digest": str(digest)})
        return None

    registry.hooks.append(no_content_type)
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND
    assert observation.live_digest == digest
    assert observation.media_type == MediaType.OCI_MANIFEST.value
    assert [r.method for r in registry.requests] == ["HEAD", "GET"]


async def test_get_header_that_disagrees_with_the_body_is_unverifiable(registry: FakeRegistry) -> None:
    lying = str(Digest.of(b"something else"))
    registry.push(REPO, "1.0", image_manifest("a"), digest_header=None)

    def lie_on_get(request: httpx.Request) -> httpx.Response | None:
        if request.method == "GET":
            return httpx.Response(
                200,
                headers={"Content-Type": MediaType.OCI_MANIFEST.value, "Docker-Content-Digest": lying},
                content=image_manifest("a"),
            )
        return None

    registry.hooks.append(lie_on_get)
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "registry digest header disagrees with content"
    assert observation.live_digest is None


async def test_head_header_that_disagrees_with_the_body_is_unverifiable(registry: FakeRegistry) -> None:
    # The HEAD names one manifest, the GET (needed to confirm a change) serves other bytes.
    head_says = Digest.of(image_manifest("one"))
    registry.push(REPO, "1.0", image_manifest("two"), digest_header=str(head_says))
    registry.hooks.append(
        lambda request: (
            httpx.Response(200, content=image_manifest("two"), headers={"Content-Type": MediaType.OCI_MANIFEST.value})
            if request.method == "GET"
            else None
        )
    )
    async with make_client(registry) as client:
        observation = await client.observe(ref(), expected=Digest.of(b"trusted"))
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "registry digest header disagrees with content"


@pytest.mark.parametrize(
    "schema1",
    [
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
    ],
)
async def test_schema1_is_unverifiable_without_a_get_and_says_to_re_push(registry: FakeRegistry, schema1: str) -> None:
    registry.push(REPO, "1.0", b'{"schemaVersion": 1}', schema1)
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == (
        "serves a Docker schema 1 manifest, which cannot be verified: re-push the tag as schema 2 or OCI"
    )
    assert [r.method for r in registry.requests] == ["HEAD"]


async def test_content_type_outside_the_accepted_set_is_unverifiable_without_a_get(registry: FakeRegistry) -> None:
    registry.push(REPO, "1.0", b'{"schemaVersion": 2}', "application/vnd.example.thing+json")
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "unexpected content type application/vnd.example.thing+json"
    assert [r.method for r in registry.requests] == ["HEAD"]


async def test_content_type_parameters_are_ignored(registry: FakeRegistry) -> None:
    digest = registry.push(REPO, "1.0", image_manifest("a"), f"{MediaType.OCI_MANIFEST.value}; charset=utf-8")
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND
    assert observation.live_digest == digest
    assert observation.media_type == MediaType.OCI_MANIFEST.value


async def test_html_login_page_with_200_is_unverifiable(registry: FakeRegistry) -> None:
    def login_page(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": "text/html; charset=utf-8"}, text="<html>login</html>")

    registry.hooks.append(login_page)
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "unexpected content type text/html"


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        pytest.param(
            b"<html>login</html>",
            MediaType.OCI_MANIFEST.value,
            "malformed manifest",
            id="html-under-a-manifest-content-type",
        ),
        pytest.param(
            image_manifest("a", MediaType.DOCKER_MANIFEST),
            MediaType.OCI_MANIFEST.value,
            "manifest media type disagrees with content type",
            id="body-media-type-disagrees",
        ),
    ],
)
async def test_a_body_its_content_type_does_not_describe_is_unverifiable(
    registry: FakeRegistry, body: bytes, content_type: str, reason: str
) -> None:
    registry.push(REPO, "1.0", body, content_type, digest_header=None)
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == reason


async def test_body_without_content_type_takes_its_media_type_from_the_body(registry: FakeRegistry) -> None:
    body = image_manifest("a", MediaType.DOCKER_MANIFEST)

    def bare(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"" if request.method == "HEAD" else body)

    registry.hooks.append(bare)
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND
    assert observation.live_digest == Digest.of(body)
    assert observation.media_type == MediaType.DOCKER_MANIFEST.value


def _manifest_of_size(size: int) -> bytes:
    start = image_manifest("big")[:-2] + b',\n  "padding": "'
    end = b'"\n}'
    return start + b"x" * (size - len(start) - len(end)) + end


async def test_manifest_of_exactly_4_mib_is_read(registry: FakeRegistry) -> None:
    body = _manifest_of_size(MAX_MANIFEST_BYTES)
    json.loads(body)
    registry.push(REPO, "1.0", body, digest_header=None)
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND
    assert observation.live_digest == Digest.of(body)


async def test_manifest_declared_larger_than_4_mib_is_unverifiable(registry: FakeRegistry) -> None:
    registry.push(REPO, "1.0", _manifest_of_size(MAX_MANIFEST_BYTES + 1), digest_header=None)
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "manifest larger than 4 MiB"


async def test_streamed_manifest_stops_being_read_beyond_the_cap(registry: FakeRegistry) -> None:
    chunk = b"x" * 65536
    sent: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(1000):  # 64 MiB if anyone read it all
            sent.append(len(chunk))
            yield chunk

    def chunked(request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD":
            return httpx.Response(200, headers={"Content-Type": MediaType.OCI_MANIFEST.value})
        return httpx.Response(200, headers={"Content-Type": MediaType.OCI_MANIFEST.value}, content=endless())

    registry.hooks.append(chunked)
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "manifest larger than 4 MiB"
    assert sum(sent) <= MAX_MANIFEST_BYTES + len(chunk)


async def test_malformed_digest_header_is_unverifiable(registry: FakeRegistry) -> None:
    registry.push(REPO, "1.0", image_manifest("a"), digest_header="sha256:NOTHEX")
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "malformed digest header"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}, "tag not found"),
        ({"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known"}]}, "repository not found"),
        ({"errors": [{"code": "NAME_INVALID"}]}, "not found (http 404)"),
        (None, "not found (http 404)"),
    ],
)
async def test_404_reads_the_error_code_with_one_get(
    registry: FakeRegistry, body: dict[str, object] | None, reason: str
) -> None:
    def not_found(request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD" or body is None:
            return httpx.Response(404, text="" if request.method == "HEAD" else "<html>not found</html>")
        return httpx.Response(404, json=body)

    registry.hooks.append(not_found)
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.MISSING
    assert observation.reason == reason
    assert [r.method for r in registry.requests][:2] == ["HEAD", "GET"]
    assert registry.requests[1].url.path == f"/v2/{REPO}/manifests/1.0"


async def test_manifest_unknown_for_a_missing_repository_is_told_apart_by_the_tag_list(
    registry: FakeRegistry,
) -> None:
    # distribution 2.8 says MANIFEST_UNKNOWN for a tag of a repository that does not exist.
    def like_distribution(request: httpx.Request) -> httpx.Response | None:
        if "/manifests/" in request.url.path:
            return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
        return None

    registry.push(REPO, "1.0", image_manifest("a"))
    registry.hooks.append(like_distribution)
    async with make_client(registry) as client:
        gone_repo = await client.observe(ref("1.0", repository="team/never"))
        gone_tag = await client.observe(ref("2.0"))
        gone_digest = await client.observe(ImageRef.parse(f"{REGISTRY}/team/never@{Digest.of(b'x')}"))
    assert gone_repo.reason == "repository not found"
    assert gone_tag.reason == "tag not found"
    # A repository of untagged manifests has no tag list either, so digests are not probed.
    assert gone_digest.reason == "digest not found"
    probes = [r for r in registry.requests if r.url.path.endswith("/tags/list")]
    assert [(p.url.path, p.url.params["n"]) for p in probes] == [
        ("/v2/team/never/tags/list", "1"),
        (f"/v2/{REPO}/tags/list", "1"),
    ]


async def test_404_for_a_tag_against_the_fake_registry(registry: FakeRegistry) -> None:
    registry.push(REPO, "1.0", image_manifest("a"))
    async with make_client(registry) as client:
        gone_tag = await client.observe(ref("2.0"))
        gone_repo = await client.observe(ref("1.0", repository="team/other"))
    assert (gone_tag.status, gone_tag.reason) == (LiveStatus.MISSING, "tag not found")
    assert (gone_repo.status, gone_repo.reason) == (LiveStatus.MISSING, "repository not found")


async def test_head_not_allowed_falls_back_to_get(registry: FakeRegistry) -> None:
    digest = registry.push(REPO, "1.0", image_manifest("a"))
    registry.hooks.append(lambda request: httpx.Response(405) if request.method == "HEAD" else None)
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.FOUND
    assert observation.live_digest == digest


async def test_other_status_on_head_is_unverifiable(registry: FakeRegistry) -> None:
    registry.hooks.append(lambda request: httpx.Response(400))
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "http 400"


async def test_rate_limit_remaining_is_recorded(registry: FakeRegistry) -> None:
    registry.push(REPO, "1.0", image_manifest("a"))
    registry.rate_limit_remaining = "20;w=21600"
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.rate_limit_remaining == 20


async def test_sha512_expectation_is_compared_in_its_own_algorithm(registry: FakeRegistry) -> None:
    body = image_manifest("a")
    registry.push(REPO, "1.0", body)
    expected = Digest.of(body, "sha512")
    async with make_client(registry) as client:
        observation = await client.observe(ref(), expected=expected)
    assert observation.status is LiveStatus.FOUND
    assert observation.live_digest == expected
    assert [r.method for r in registry.requests] == ["HEAD", "GET"]  # the body was hashed in sha512


# -- digest-only references


async def test_digest_reference_found_by_head(registry: FakeRegistry) -> None:
    digest = registry.push(REPO, None, image_manifest("a"))
    async with make_client(registry) as client:
        observation = await client.observe(ImageRef.parse(f"{REGISTRY}/{REPO}@{digest}"))
    assert observation.status is LiveStatus.FOUND
    assert observation.live_digest == digest
    assert [(r.method, r.url.path) for r in registry.requests] == [("HEAD", f"/v2/{REPO}/manifests/{digest}")]


async def test_digest_reference_without_header_is_found_by_status(registry: FakeRegistry) -> None:
    digest = registry.push(REPO, None, image_manifest("a"), digest_header=None)
    async with make_client(registry) as client:
        observation = await client.observe(ImageRef.parse(f"{REGISTRY}/{REPO}@{digest}"))
    assert observation.status is LiveStatus.FOUND
    assert observation.live_digest == digest


async def test_digest_reference_with_disagreeing_header_is_unverifiable(registry: FakeRegistry) -> None:
    digest = registry.push(REPO, None, image_manifest("a"), digest_header=str(Digest.of(b"other")))
    async with make_client(registry) as client:
        observation = await client.observe(ImageRef.parse(f"{REGISTRY}/{REPO}@{digest}"))
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "registry digest header disagrees with requested digest"


async def test_digest_reference_missing(registry: FakeRegistry) -> None:
    registry.push(REPO, "1.0", image_manifest("a"))
    digest = Digest.of(b"never pushed")
    async with make_client(registry) as client:
        observation = await client.observe(ImageRef.parse(f"{REGISTRY}/{REPO}@{digest}"))
    assert observation.status is LiveStatus.MISSING
    assert observation.reason == "digest not found"


async def test_digest_reference_whose_content_does_not_match_is_unverifiable(registry: FakeRegistry) -> None:
    digest = Digest.of(b"asked for")
    registry.push(REPO, None, index_manifest([]), MediaType.OCI_INDEX.value, digest_header=None)
    registry.manifests[(REPO, str(digest))] = registry.manifests[(REPO, str(Digest.of(index_manifest([]))))]
    async with make_client(registry) as client:
        observation = await client.observe(ImageRef.parse(f"{REGISTRY}/{REPO}@{digest}"), platforms=True)
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "manifest content does not match the requested digest"


# -- platforms


def _index(registry: FakeRegistry, tag: str = "1.0") -> tuple[Digest, dict[str, Digest]]:
    amd64 = registry.push(REPO, None, image_manifest("amd64"))
    arm64 = registry.push(REPO, None, image_manifest("arm64"))
    attestation = registry.push(REPO, None, image_manifest("attestation"))
    children = [
        child(amd64, "linux", "amd64"),
        child(arm64, "linux", "arm64", "v8"),
        child(
            attestation,
            "unknown",
            "unknown",
            annotations={"vnd.docker.reference.type": "attestation-manifest"},
        ),
    ]
    digest = registry.push(REPO, tag, index_manifest(children), MediaType.OCI_INDEX.value)
    return digest, {"linux/amd64": amd64, "linux/arm64/v8": arm64}


async def test_platform_children_of_an_index(registry: FakeRegistry) -> None:
    digest, platforms = _index(registry)
    async with make_client(registry) as client:
        observation = await client.observe(ref(), expected=digest, platforms=True)
    assert observation.status is LiveStatus.FOUND
    assert observation.live_digest == digest
    assert observation.media_type == MediaType.OCI_INDEX.value
    assert observation.platforms == platforms
    assert [r.method for r in registry.requests] == ["HEAD", "GET"]


async def test_platforms_reuse_the_confirming_get(registry: FakeRegistry) -> None:
    digest, platforms = _index(registry)
    async with make_client(registry) as client:
        observation = await client.observe(ref(), expected=Digest.of(b"trusted"), platforms=True)
    assert observation.live_digest == digest
    assert observation.platforms == platforms
    assert [r.method for r in registry.requests] == ["HEAD", "GET"]


async def test_platforms_of_a_single_manifest_need_no_get(registry: FakeRegistry) -> None:
    digest = registry.push(REPO, "1.0", image_manifest("a"))
    async with make_client(registry) as client:
        observation = await client.observe(ref(), platforms=True)
    assert observation.live_digest == digest
    assert observation.platforms is None
    assert [r.method for r in registry.requests] == ["HEAD"]


async def test_platforms_come_free_with_a_confirming_get(registry: FakeRegistry) -> None:
    digest, platforms = _index(registry)
    async with make_client(registry) as client:
        observation = await client.observe(ref(), expected=platforms["linux/amd64"])
    assert observation.live_digest == digest
    assert observation.platforms == platforms
    assert [r.method for r in registry.requests] == ["HEAD", "GET"]


async def test_platforms_are_not_fetched_unless_asked(registry: FakeRegistry) -> None:
    digest, _ = _index(registry)
    async with make_client(registry) as client:
        observation = await client.observe(ref())
    assert observation.live_digest == digest
    assert observation.platforms is None
    assert [r.method for r in registry.requests] == ["HEAD"]


async def test_platforms_of_a_digest_reference(registry: FakeRegistry) -> None:
    digest, platforms = _index(registry)
    async with make_client(registry) as client:
        observation = await client.observe(ImageRef.parse(f"{REGISTRY}/{REPO}@{digest}"), platforms=True)
    assert observation.live_digest == digest
    assert observation.platforms == platforms


async def test_malformed_index_is_unverifiable(registry: FakeRegistry) -> None:
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MediaType.OCI_INDEX.value,
            "manifests": [{"digest": "nope", "platform": {"os": "linux", "architecture": "amd64"}}],
        }
    ).encode()
    registry.push(REPO, "1.0", body, MediaType.OCI_INDEX.value)
    async with make_client(registry) as client:
        observation = await client.observe(ref(), platforms=True)
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "malformed manifest"


# -- fetch_manifest


async def test_fetch_manifest_returns_verified_bytes_and_platforms(registry: FakeRegistry) -> None:
    digest, platforms = _index(registry)
    async with make_client(registry) as client:
        by_tag = await client.fetch_manifest(ref())
        by_digest = await client.fetch_manifest(ImageRef.parse(f"{REGISTRY}/{REPO}@{digest}"))
    for manifest in (by_tag, by_digest):
        assert manifest.digest == digest
        assert manifest.media_type is MediaType.OCI_INDEX
        assert Digest.of(manifest.body) == digest
        assert manifest.platforms == platforms
    assert "body" not in repr(by_tag)


async def test_fetch_manifest_raises_registry_error_with_reason(registry: FakeRegistry) -> None:
    registry.push(REPO, "1.0", image_manifest("a"))
    async with make_client(registry) as client:
        with pytest.raises(RegistryRequestError) as caught:
            await client.fetch_manifest(ref("2.0"))
    assert caught.value.reason == "tag not found"
    assert caught.value.hint
