"""The registry client against real docker-registry processes: digests, auth, TLS, retries, paging, redirects.

Request counts come from `client.stats` and the token server's log, so each test pins down not only the
answer but how many round trips it cost and where credentials went.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from audit.adapters.registry import (
    Credential,
    DockerConfigCredentials,
    RegistryClient,
    RegistryRequestError,
    RegistrySettings,
    StaticCredentials,
)
from audit.models import MANIFEST_ACCEPT, Digest, ImageRef, LiveStatus, MediaType, Observation
from tests.support.docker_config import write_docker_config
from tests.support.local_registry import LocalRegistry
from tests.support.loopback_server import LoopbackServer, Recorded, Reply
from tests.support.pusher import Credentials, ImageKind, PushedImage, sha256_digest
from tests.support.registry_fixtures import RegistryFactory
from tests.support.registry_process import free_port
from tests.support.token_server import PULL, Account, TokenServer

pytestmark = pytest.mark.integration

KINDS: tuple[ImageKind, ...] = ("docker", "oci", "oci-index", "docker-list")
THREE_PLATFORMS = ["linux/amd64", "linux/arm64/v8", "linux/arm/v7"]


# --- helpers ------------------------------------------------------------------------------------------------


def ref(registry: LocalRegistry, repository: str, tag: str | None = None, digest: str | None = None) -> ImageRef:
    return ImageRef.parse(registry.reference(repository, tag, digest))


def digest_of(image: PushedImage) -> Digest:
    return Digest.parse(image.digest)


def static_credentials(registry: LocalRegistry, credentials: Credentials | None = None) -> StaticCredentials:
    chosen = credentials if credentials is not None else registry.credentials
    assert chosen is not None
    return StaticCredentials({registry.host: Credential.basic(chosen.username, chosen.password)})


def token_server_of(registry: LocalRegistry) -> TokenServer:
    assert registry.token_server is not None
    return registry.token_server


def found(observation: Observation, digest: Digest) -> bool:
    return observation.status is LiveStatus.FOUND and observation.live_digest == digest


async def no_wait(_seconds: float) -> None:
    """Back-off without waiting: retries are counted, not timed."""


class FakeClock:
    """A monotonic clock the test moves forward, for token lifetimes without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def plain_client(registry: LocalRegistry) -> AsyncIterator[RegistryClient]:
    """A client allowed to use plain http to the module's registry, and nothing else."""
    async with RegistryClient(RegistrySettings(insecure_registries=frozenset({registry.host}))) as client:
        yield client


@pytest.fixture
def token_server(token_registry: LocalRegistry) -> Iterator[TokenServer]:
    """The shared token registry's server with an empty log, and no failure left pending for the next test."""
    server = token_server_of(token_registry)
    server.reset()
    yield server
    server.reset()


@pytest.fixture
async def token_client(token_registry: LocalRegistry) -> AsyncIterator[RegistryClient]:
    settings = RegistrySettings(ca_file=token_registry.ca_file)
    async with RegistryClient(settings, static_credentials(token_registry)) as client:
        yield client


# --- one HEAD per check -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_each_manifest_kind_is_found_with_one_head(
    registry: LocalRegistry, repository: str, plain_client: RegistryClient, kind: ImageKind
) -> None:
    image = registry.pusher.push_image(repository, "v1", kind)

    observation = await plain_client.observe(ref(registry, repository, "v1"))

    assert observation.status is LiveStatus.FOUND
    assert observation.live_digest == digest_of(image)
    assert observation.media_type == image.media_type.value
    assert observation.reason is None
    assert observation.platforms is None
    assert (plain_client.stats.heads, plain_client.stats.gets) == (1, 0)


async def test_expected_digest_that_matches_costs_one_head(
    registry: LocalRegistry, repository: str, plain_client: RegistryClient
) -> None:
    image = registry.pusher.push_image(repository, "1.0", "oci")

    observation = await plain_client.observe(ref(registry, repository, "1.0"), expected=digest_of(image))

    assert found(observation, digest_of(image))
    assert (plain_client.stats.heads, plain_client.stats.gets) == (1, 0)


@pytest.mark.parametrize("kind", ["docker", "oci-index"])
async def test_tampered_tag_is_confirmed_by_hashing_the_body(
    registry: LocalRegistry, repository: str, plain_client: RegistryClient, kind: ImageKind
) -> None:
    original = registry.pusher.push_image(repository, "1.0", kind)
    tampered = registry.pusher.tamper(repository, "1.0")

    observation = await plain_client.observe(ref(registry, repository, "1.0"), expected=digest_of(original))

    assert tampered.digest != original.digest
    assert found(observation, digest_of(tampered))
    assert observation.media_type == tampered.media_type.value
    assert (plain_client.stats.heads, plain_client.stats.gets) == (1, 1)


async def test_deleted_tag_is_missing(registry: LocalRegistry, repository: str, plain_client: RegistryClient) -> None:
    image = registry.pusher.push_image(repository, "gone", "docker")
    kept = registry.pusher.push_image(repository, "kept", "docker")
    registry.pusher.delete_manifest(repository, image.digest)

    gone = await plain_client.observe(ref(registry, repository, "gone"), expected=digest_of(image))
    still = await plain_client.observe(ref(registry, repository, "kept"))

    assert gone.status is LiveStatus.MISSING
    assert gone.reason == "tag not found"
    assert gone.live_digest is None
    assert found(still, digest_of(kept))


async def test_unknown_repository_is_missing_with_its_own_reason(
    registry: LocalRegistry, repository: str, plain_client: RegistryClient
) -> None:
    # docker-registry 2.8 answers a manifest request for an unknown repository with MANIFEST_UNKNOWN, exactly
    # as for an unknown tag; only the tag list says NAME_UNKNOWN. "tag not found" would send the operator
    # looking for a deleted tag when the image name itself is wrong.
    observation = await plain_client.observe(ref(registry, f"{repository}/never-pushed", "v1"))

    assert observation.status is LiveStatus.MISSING
    assert observation.reason == "repository not found"


async def test_digest_reference_found_then_missing_after_delete(
    registry: LocalRegistry, repository: str, plain_client: RegistryClient
) -> None:
    image = registry.pusher.push_image(repository, None, "oci")
    by_digest = ref(registry, repository, digest=image.digest)

    present = await plain_client.observe(by_digest)
    registry.pusher.delete_manifest(repository, image.digest)
    deleted = await plain_client.observe(by_digest)

    assert by_digest.tag is None
    assert found(present, digest_of(image))
    assert present.media_type == MediaType.OCI_MANIFEST.value
    assert deleted.status is LiveStatus.MISSING
    assert deleted.reason == "digest not found"
    assert deleted.live_digest is None


# --- platforms of an index ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["oci-index", "docker-list"])
async def test_platforms_of_an_index_are_its_children(
    registry: LocalRegistry, repository: str, plain_client: RegistryClient, kind: ImageKind
) -> None:
    image = registry.pusher.push_image(repository, "multi", kind, THREE_PLATFORMS)

    observation = await plain_client.observe(ref(registry, repository, "multi"), platforms=True)

    assert found(observation, digest_of(image))
    assert observation.platforms == {name: Digest.parse(child) for name, child in image.platforms.items()}
    assert list(observation.platforms) == THREE_PLATFORMS
    assert plain_client.stats.gets == 1


async def test_platforms_of_a_single_manifest_need_no_get(
    registry: LocalRegistry, repository: str, plain_client: RegistryClient
) -> None:
    image = registry.pusher.push_image(repository, "single", "docker", ["linux/arm64"])

    observation = await plain_client.observe(ref(registry, repository, "single"), platforms=True)

    assert found(observation, digest_of(image))
    assert observation.platforms is None
    assert (plain_client.stats.heads, plain_client.stats.gets) == (1, 0)


async def test_fetch_manifest_returns_the_pushed_bytes(
    registry: LocalRegistry, repository: str, plain_client: RegistryClient
) -> None:
    image = registry.pusher.push_image(repository, "multi", "docker-list")

    manifest = await plain_client.fetch_manifest(ref(registry, repository, "multi"))
    child = await plain_client.fetch_manifest(ref(registry, repository, digest=image.platforms["linux/arm64/v8"]))

    assert manifest.body == image.manifest
    assert manifest.digest == digest_of(image)
    assert manifest.media_type is MediaType.DOCKER_LIST
    assert manifest.platforms == {name: Digest.parse(d) for name, d in image.platforms.items()}
    assert child.digest == Digest.parse(image.platforms["linux/arm64/v8"])
    assert child.media_type is MediaType.DOCKER_MANIFEST
    assert child.platforms is None


async def test_fetch_manifest_of_a_deleted_tag_raises_with_the_reason(
    registry: LocalRegistry, repository: str, plain_client: RegistryClient
) -> None:
    image = registry.pusher.push_image(repository, "gone", "oci")
    registry.pusher.delete_manifest(repository, image.digest)

    with pytest.raises(RegistryRequestError) as raised:
        await plain_client.fetch_manifest(ref(registry, repository, "gone"))

    assert raised.value.reason == "tag not found"
    assert raised.value.registry == registry.host


# --- token auth over TLS ------------------------------------------------------------------------------------


async def test_token_auth_over_tls_with_the_ca_file(
    token_registry: LocalRegistry, repository: str, token_server: TokenServer, token_client: RegistryClient
) -> None:
    image = token_registry.pusher.push_image(repository, "v1", "oci-index")

    first = await token_client.observe(ref(token_registry, repository, "v1"))
    second = await token_client.observe(ref(token_registry, repository, "v1"))

    assert found(first, digest_of(image))
    assert found(second, digest_of(image))
    [request] = token_server.requests
    assert (request.method, request.authorization, request.username, request.status) == (
        "GET",
        "basic",
        "auditor",
        200,
    )
    assert request.scopes == (f"repository:{repository}:pull",)
    assert request.service == token_server.service
    # The first HEAD is challenged; the second goes out with the cached token.
    stats = token_client.stats
    assert (stats.heads, stats.gets, stats.token_requests, stats.challenges) == (3, 0, 1, 1)


async def test_tls_registry_without_the_ca_file_is_unverifiable(
    token_registry: LocalRegistry, repository: str, token_server: TokenServer
) -> None:
    token_registry.pusher.push_image(repository, "v1", "docker")

    async with RegistryClient(RegistrySettings(), static_credentials(token_registry)) as client:
        observation = await client.observe(ref(token_registry, repository, "v1"))

    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "tls: certificate verify failed"
    assert observation.live_digest is None
    assert token_server.requests == []


async def test_wrong_password_is_auth_failed(
    token_registry: LocalRegistry, repository: str, token_server: TokenServer
) -> None:
    token_registry.pusher.push_image(repository, "v1", "docker")
    wrong = static_credentials(token_registry, Credentials("auditor", "not-the-password"))

    async with RegistryClient(RegistrySettings(ca_file=token_registry.ca_file), wrong) as client:
        observation = await client.observe(ref(token_registry, repository, "v1"))

    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "auth failed"
    assert "not-the-password" not in repr(observation)
    assert [(r.authorization, r.username, r.status) for r in token_server.requests] == [("basic", "auditor", 401)]


async def test_anonymous_is_refused_when_the_token_server_wants_credentials(
    token_registry: LocalRegistry, repository: str, token_server: TokenServer
) -> None:
    token_registry.pusher.push_image(repository, "v1", "docker")

    async with RegistryClient(RegistrySettings(ca_file=token_registry.ca_file)) as client:
        observation = await client.observe(ref(token_registry, repository, "v1"))

    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "auth failed"
    assert [(r.authorization, r.status) for r in token_server.requests] == [("none", 401)]


async def test_anonymous_pull_works_when_the_token_server_allows_it(registry_factory: RegistryFactory) -> None:
    running = registry_factory(auth="token", tls=True, anonymous_pull=True)
    image = running.pusher.push_image("public/app", "v1", "docker")

    async with RegistryClient(RegistrySettings(ca_file=running.ca_file)) as client:
        observation = await client.observe(ref(running, "public/app", "v1"))

    assert found(observation, digest_of(image))
    assert [(r.authorization, r.status) for r in token_server_of(running).requests] == [("none", 200)]


async def test_a_token_without_the_pull_grant_is_unverifiable_not_missing(
    registry_factory: RegistryFactory,
) -> None:
    # The token server grants this account nothing on other/app; the token is valid but the registry answers
    # 401 insufficient_scope. That must not read as a missing tag (REGISTRY-FACTS §6).
    team = Credentials("team-reader", "team-secret")
    running = registry_factory(
        auth="token", tls=True, accounts={team.username: Account(team.password, {"team/*": PULL})}
    )
    own = running.pusher.push_image("team/app", "v1", "docker")
    running.pusher.push_image("other/app", "v1", "docker")

    async with RegistryClient(RegistrySettings(ca_file=running.ca_file), static_credentials(running, team)) as client:
        allowed = await client.observe(ref(running, "team/app", "v1"))
        refused = await client.observe(ref(running, "other/app", "v1"))

    assert found(allowed, digest_of(own))
    assert refused.status is LiveStatus.UNVERIFIABLE
    assert refused.reason == "auth failed"
    assert {(r.username, r.status) for r in token_server_of(running).requests} == {("team-reader", 200)}


async def test_forty_concurrent_checks_in_one_repository_share_one_token(
    token_registry: LocalRegistry, repository: str, token_server: TokenServer, token_client: RegistryClient
) -> None:
    image = token_registry.pusher.push_image(repository, "t00", "docker")
    tags = [f"t{i:02d}" for i in range(40)]
    for tag in tags[1:]:
        token_registry.pusher.tag(image, tag)
    token_server.reset()

    observations = await asyncio.gather(*(token_client.observe(ref(token_registry, repository, tag)) for tag in tags))

    assert [o.live_digest for o in observations] == [digest_of(image)] * 40
    assert token_server.count_for_repository(repository) == 1
    assert token_server.count() == 1
    assert token_client.stats.token_requests == 1


async def test_three_repositories_need_three_tokens(
    token_registry: LocalRegistry, repository: str, token_server: TokenServer, token_client: RegistryClient
) -> None:
    repositories = [f"{repository}-{n}" for n in range(3)]
    pushed = {
        (name, tag): token_registry.pusher.push_image(name, tag, "oci")
        for name in repositories
        for tag in ("a", "b", "c")
    }
    token_server.reset()

    observations = await asyncio.gather(*(token_client.observe(ref(token_registry, name, tag)) for name, tag in pushed))

    assert [o.live_digest for o in observations] == [digest_of(image) for image in pushed.values()]
    assert token_server.count() == 3
    assert [token_server.count(f"repository:{name}:pull") for name in repositories] == [1, 1, 1]


async def test_token_is_renewed_before_it_expires(
    token_registry: LocalRegistry, repository: str, token_server: TokenServer
) -> None:
    # The token server says expires_in=300. The client renews shortly before that; the registry would still
    # accept the old token (docker-registry allows 60 s of leeway), so a second token request proves renewal.
    assert token_server.expires_in == 300
    image = token_registry.pusher.push_image(repository, "v1", "docker")
    clock = FakeClock()
    settings = RegistrySettings(ca_file=token_registry.ca_file)
    target = ref(token_registry, repository, "v1")

    async with RegistryClient(settings, static_credentials(token_registry), clock=clock) as client:
        first = await client.observe(target)
        clock.advance(280)
        cached = await client.observe(target)
        requests_while_fresh = token_server.count()
        clock.advance(20)
        renewed = await client.observe(target)

    assert [o.live_digest for o in (first, cached, renewed)] == [digest_of(image)] * 3
    assert requests_while_fresh == 1
    assert token_server.count(f"repository:{repository}:pull") == 2


async def test_short_token_lifetimes_are_treated_as_sixty_seconds(registry_factory: RegistryFactory) -> None:
    # The token spec: expires_in below 60 means 60. A client taking 1 s literally would fetch a token per
    # request; one that ignored expiry would never renew. Both would fail one of the two counts below.
    running = registry_factory(auth="token", tls=True, expires_in=1)
    token_server = token_server_of(running)
    image = running.pusher.push_image("short/lived", "v1", "docker")
    clock = FakeClock()
    target = ref(running, "short/lived", "v1")

    async with RegistryClient(
        RegistrySettings(ca_file=running.ca_file), static_credentials(running), clock=clock
    ) as client:
        await client.observe(target)
        clock.advance(40)
        cached = await client.observe(target)
        requests_at_forty_seconds = token_server.count()
        clock.advance(21)
        renewed = await client.observe(target)

    assert found(cached, digest_of(image))
    assert found(renewed, digest_of(image))
    assert requests_at_forty_seconds == 1
    assert token_server.count() == 2


async def test_token_server_failures_are_retried(
    token_registry: LocalRegistry, repository: str, token_server: TokenServer
) -> None:
    image = token_registry.pusher.push_image(repository, "v1", "docker")
    token_server.fail_next(2, 503)

    async with RegistryClient(
        RegistrySettings(ca_file=token_registry.ca_file), static_credentials(token_registry), sleep=no_wait
    ) as client:
        observation = await client.observe(ref(token_registry, repository, "v1"))

    assert found(observation, digest_of(image))
    assert [r.status for r in token_server.requests] == [503, 503, 200]
    assert client.stats.token_requests == 3
    assert client.stats.retries == 2


async def test_a_token_server_that_keeps_failing_makes_the_check_unverifiable(
    token_registry: LocalRegistry, repository: str, token_server: TokenServer
) -> None:
    token_registry.pusher.push_image(repository, "v1", "docker")
    token_server.fail_next(10, 503)

    async with RegistryClient(
        RegistrySettings(ca_file=token_registry.ca_file, max_attempts=3),
        static_credentials(token_registry),
        sleep=no_wait,
    ) as client:
        observation = await client.observe(ref(token_registry, repository, "v1"))

    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "token server http 503"
    assert observation.live_digest is None
    assert [r.status for r in token_server.requests] == [503, 503, 503]


# --- Basic auth, plain http, insecure realms ----------------------------------------------------------------


async def test_basic_auth_over_tls_from_a_docker_config(
    basic_registry: LocalRegistry, repository: str, tmp_path: Path
) -> None:
    assert basic_registry.credentials is not None
    image = basic_registry.pusher.push_image(repository, "v1", "oci")
    config_dir = write_docker_config(tmp_path / "docker", {basic_registry.host: basic_registry.credentials})
    settings = RegistrySettings(ca_file=basic_registry.ca_file)

    async with RegistryClient(settings, DockerConfigCredentials(config_dir)) as client:
        first = await client.observe(ref(basic_registry, repository, "v1"))
        second = await client.observe(ref(basic_registry, repository, "v1"), expected=digest_of(image))

    assert found(first, digest_of(image))
    assert found(second, digest_of(image))
    # One 401 teaches the client the scheme; afterwards Basic goes out with the first request.
    assert (client.stats.heads, client.stats.gets, client.stats.challenges) == (3, 0, 1)
    assert client.stats.token_requests == 0


async def test_basic_auth_with_a_wrong_password_is_auth_failed(
    basic_registry: LocalRegistry, repository: str, tmp_path: Path
) -> None:
    basic_registry.pusher.push_image(repository, "v1", "oci")
    config_dir = write_docker_config(
        tmp_path / "docker", {basic_registry.host: Credentials("auditor", "not-the-password")}
    )

    async with RegistryClient(
        RegistrySettings(ca_file=basic_registry.ca_file), DockerConfigCredentials(config_dir)
    ) as client:
        observation = await client.observe(ref(basic_registry, repository, "v1"))

    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "auth failed"


def access_log_count(registry: LocalRegistry, needle: str) -> int:
    return registry.log_path.read_text(errors="replace").count(needle)


def wait_for_access_log(registry: LocalRegistry, needle: str, timeout: float = 5.0) -> int:
    """The registry writes its access log after answering; wait for the line rather than race it."""
    deadline = time.monotonic() + timeout
    while (count := access_log_count(registry, needle)) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    return count


async def test_plain_http_registry_is_never_used_unless_listed_insecure(
    registry: LocalRegistry, repository: str
) -> None:
    image = registry.pusher.push_image(repository, "v1", "docker")
    target = ref(registry, repository, "v1")
    head_line = f'"HEAD /v2/{repository}/manifests/v1 '

    async with RegistryClient(RegistrySettings()) as strict:
        refused = await strict.observe(target)
    async with RegistryClient(RegistrySettings(insecure_registries=frozenset({registry.host}))) as listed:
        allowed = await listed.observe(target)

    assert refused.status is LiveStatus.UNVERIFIABLE
    assert refused.reason == "tls: wrong version number"
    assert refused.live_digest is None
    assert found(allowed, digest_of(image))
    # Exactly one HEAD reached the plain server: the listed client's. The strict one never fell back to http.
    assert wait_for_access_log(registry, head_line) == 1


async def test_listing_another_port_of_the_same_host_is_not_enough(registry: LocalRegistry, repository: str) -> None:
    registry.pusher.push_image(repository, "v1", "docker")
    other_port = f"127.0.0.1:{free_port()}"

    async with RegistryClient(RegistrySettings(insecure_registries=frozenset({other_port}))) as client:
        observation = await client.observe(ref(registry, repository, "v1"))

    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "tls: wrong version number"


async def test_plain_http_token_realm_is_refused_before_any_credential_is_sent(
    registry_factory: RegistryFactory,
) -> None:
    running = registry_factory(auth="token", tls=True, token_server_tls=False)
    token_server = token_server_of(running)
    image = running.pusher.push_image("team/app", "v1", "docker")
    assert token_server.realm.startswith("http://") and token_server.host != running.host
    target = ref(running, "team/app", "v1")

    async with RegistryClient(RegistrySettings(ca_file=running.ca_file), static_credentials(running)) as client:
        refused = await client.observe(target)
    requests_after_refusal = token_server.requests
    realm_listed = RegistrySettings(ca_file=running.ca_file, insecure_registries=frozenset({token_server.host}))
    async with RegistryClient(realm_listed, static_credentials(running)) as client:
        allowed = await client.observe(target)

    assert refused.status is LiveStatus.UNVERIFIABLE
    assert refused.reason == "insecure token realm"
    assert requests_after_refusal == []
    assert found(allowed, digest_of(image))
    assert [(r.authorization, r.username) for r in token_server.requests] == [("basic", "auditor")]


# --- tag listing --------------------------------------------------------------------------------------------


def registry_tag_list(registry: LocalRegistry, repository: str) -> list[str]:
    with httpx.Client(verify=registry.verify, trust_env=False) as client:
        tags: list[str] = client.get(f"{registry.url}/v2/{repository}/tags/list").json()["tags"]
    return tags


async def test_list_tags_returns_every_tag_in_registry_order(
    registry: LocalRegistry, repository: str, plain_client: RegistryClient
) -> None:
    image = registry.pusher.push_image(repository, "t00", "docker")
    expected = [f"t{i:02d}" for i in range(30)]
    for tag in expected[1:]:
        registry.pusher.tag(image, tag)

    tags = list((await plain_client.list_tags(registry.host, repository)).tags)

    assert sorted(tags) == expected
    assert tags == registry_tag_list(registry, repository)
    assert plain_client.stats.gets == 1


async def test_list_tags_of_an_unknown_repository_raises(
    registry: LocalRegistry, repository: str, plain_client: RegistryClient
) -> None:
    with pytest.raises(RegistryRequestError) as raised:
        await plain_client.list_tags(registry.host, repository)

    assert raised.value.reason == "repository not found"


async def test_list_tags_follows_link_pages(
    registry: LocalRegistry, repository: str, plain_client: RegistryClient
) -> None:
    # docker-registry 2.8 ignores `n` and returns one page, so a loopback front pages the real registry's
    # list by 7 with RFC 5988 `Link` headers, as distribution 3 and most hosted registries do.
    image = registry.pusher.push_image(repository, "t00", "docker")
    for i in range(1, 30):
        registry.pusher.tag(image, f"t{i:02d}")
    every_tag = registry_tag_list(registry, repository)
    page_size = 7

    def tags_page(request: Recorded) -> Reply:
        query = parse_qs(urlsplit(request.path).query)
        last = query.get("last", [None])[0]
        start = every_tag.index(last) + 1 if last is not None else 0
        page = every_tag[start : start + page_size]
        headers = {"Content-Type": "application/json"}
        if start + page_size < len(every_tag):
            headers["Link"] = f'</v2/{repository}/tags/list?n={page_size}&last={page[-1]}>; rel="next"'
        return Reply(200, headers, json.dumps({"name": repository, "tags": page}).encode())

    with LoopbackServer(tags_page) as front:
        async with RegistryClient(RegistrySettings(insecure_registries=frozenset({front.host}))) as client:
            tags = list((await client.list_tags(front.host, repository)).tags)

    assert tags == every_tag
    assert len(tags) == 30
    assert len(front.requests) == 5
    assert [parse_qs(urlsplit(r.path).query).get("last") for r in front.requests] == [
        None,
        [every_tag[6]],
        [every_tag[13]],
        [every_tag[20]],
        [every_tag[27]],
    ]


# --- redirects ----------------------------------------------------------------------------------------------


STORED_MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": MediaType.DOCKER_MANIFEST.value,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 2,
            "digest": sha256_digest(b"{}"),
        },
        "layers": [],
    }
).encode()


async def test_credentials_are_not_forwarded_to_a_redirect_origin() -> None:
    password = "registry-secret-password"
    stored_digest = sha256_digest(STORED_MANIFEST)

    def storage(_request: Recorded) -> Reply:
        return Reply(
            200,
            {"Content-Type": MediaType.DOCKER_MANIFEST.value, "Docker-Content-Digest": stored_digest},
            STORED_MANIFEST,
        )

    with LoopbackServer(storage) as cdn:

        def registry(request: Recorded) -> Reply:
            if "authorization" not in request.headers:
                return Reply(401, {"WWW-Authenticate": 'Basic realm="redirect-test"'})
            return Reply(307, {"Location": f"{cdn.url}/blobs/manifest?sig=abc"})

        with LoopbackServer(registry) as front:
            settings = RegistrySettings(insecure_registries=frozenset({front.host, cdn.host}))
            credentials = StaticCredentials({front.host: Credential.basic("auditor", password)})
            async with RegistryClient(settings, credentials) as client:
                # A pin that differs from the header forces the GET too, so both methods are redirected.
                observation = await client.observe(
                    ImageRef.parse(f"{front.host}/team/app:v1"), expected=Digest.of(b"something else")
                )

    assert found(observation, Digest.parse(stored_digest))
    assert [(r.method, r.headers.get("authorization", "")[:6]) for r in front.requests] == [
        ("HEAD", ""),
        ("HEAD", "Basic "),
        ("GET", "Basic "),
    ]
    assert [(r.method, r.path) for r in cdn.requests] == [
        ("HEAD", "/blobs/manifest?sig=abc"),
        ("GET", "/blobs/manifest?sig=abc"),
    ]
    assert all("authorization" not in r.headers for r in cdn.requests)
    assert not any(password in value for r in cdn.requests for value in r.headers.values())
    assert client.stats.redirects == 2
    assert {(r.headers["accept"], r.headers["accept-encoding"]) for r in front.requests + cdn.requests} == {
        (MANIFEST_ACCEPT, "identity")
    }


async def test_a_redirect_to_plain_http_that_is_not_listed_is_refused() -> None:
    def storage(_request: Recorded) -> Reply:
        return Reply(200, {"Content-Type": MediaType.DOCKER_MANIFEST.value}, STORED_MANIFEST)

    with LoopbackServer(storage) as cdn:

        def registry(_request: Recorded) -> Reply:
            return Reply(307, {"Location": f"{cdn.url}/blobs/manifest"})

        with LoopbackServer(registry) as front:
            settings = RegistrySettings(insecure_registries=frozenset({front.host}))
            async with RegistryClient(settings) as client:
                observation = await client.observe(ImageRef.parse(f"{front.host}/team/app:v1"))

    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "insecure redirect"
    assert cdn.requests == []


async def test_cookies_a_registry_sets_are_never_sent_back_over_a_real_socket() -> None:
    """The registry API needs no cookies; a registry (or a load balancer before it) must not get to track us."""
    stored_digest = sha256_digest(STORED_MANIFEST)

    def registry(_request: Recorded) -> Reply:
        headers = {"Content-Type": MediaType.DOCKER_MANIFEST.value, "Docker-Content-Digest": stored_digest}
        return Reply(200, headers | {"Set-Cookie": "session=tracked; Path=/; Max-Age=3600"})

    with LoopbackServer(registry) as server:
        host = f"localhost:{server.host.rpartition(':')[2]}"  # a name: cookie jars ignore cookies of IP addresses
        settings = RegistrySettings(insecure_registries=frozenset({host}))
        async with RegistryClient(settings) as client:
            first = await client.observe(ImageRef.parse(f"{host}/team/app:v1"))
            second = await client.observe(ImageRef.parse(f"{host}/team/app:v2"))
    assert found(first, Digest.parse(stored_digest))
    assert found(second, Digest.parse(stored_digest))
    assert [r.path for r in server.requests] == ["/v2/team/app/manifests/v1", "/v2/team/app/manifests/v2"]
    assert all("cookie" not in r.headers for r in server.requests)


# --- proxies from the environment ----------------------------------------------------------------------------


async def test_a_proxy_from_the_environment_carries_the_requests(
    registry: LocalRegistry, repository: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = registry.pusher.push_image(repository, "v1", "docker")

    def proxy(request: Recorded) -> Reply:  # answers in the registry's place, as a caching proxy might
        return Reply(200, {"Content-Type": MediaType.DOCKER_MANIFEST.value, "Docker-Content-Digest": image.digest})

    with LoopbackServer(proxy) as forward:
        monkeypatch.setenv("HTTP_PROXY", forward.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        settings = RegistrySettings(insecure_registries=frozenset({registry.host}))
        async with RegistryClient(settings) as client:
            observation = await client.observe(ref(registry, repository, "v1"))
        monkeypatch.setenv("NO_PROXY", registry.host.partition(":")[0])
        async with RegistryClient(settings) as client:
            direct = await client.observe(ref(registry, repository, "v1"))
    assert str(observation.live_digest) == image.digest
    # the absolute-form request line of a forward proxy
    assert [r.path for r in forward.requests] == [f"http://{registry.host}/v2/{repository}/manifests/v1"]
    assert str(direct.live_digest) == image.digest  # NO_PROXY: straight to the registry, the proxy saw nothing more


# --- the wire transport: bodies and time are bounded on real sockets too --------------------------------------


async def test_a_gzip_bomb_over_a_real_socket_is_refused_not_inflated() -> None:
    import gzip  # noqa: PLC0415
    import tracemalloc  # noqa: PLC0415

    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)

    def bombing(request: Recorded) -> Reply:
        headers = {"Content-Type": MediaType.DOCKER_MANIFEST.value, "Content-Encoding": "gzip"}
        return Reply(200, headers, b"" if request.method == "HEAD" else bomb)  # no digest header: a GET follows

    with LoopbackServer(bombing) as server:
        settings = RegistrySettings(insecure_registries=frozenset({server.host}))
        tracemalloc.start()
        try:
            async with RegistryClient(settings) as client:
                observation = await client.observe(ImageRef.parse(f"{server.host}/team/app:1.0"))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "manifest larger than 4 MiB"
    assert peak < 16 * 1024 * 1024  # never the 64 MiB the body inflates to


async def test_a_registry_sending_one_byte_a_second_is_cut_off_by_the_timeout() -> None:
    """The timeout bounds a whole request: a trickle that keeps every read short still ends in `timeout`."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n\r\n"
    trickling: list[asyncio.Task[None]] = []

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for byte in answer:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.2)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        trickling.append(task)
        try:
            await trickle(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    host = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        settings = RegistrySettings(insecure_registries=frozenset({host}), timeout=1.0, max_attempts=1)
        async with RegistryClient(settings) as client:
            observation = await client.observe(ImageRef.parse(f"{host}/team/app:1.0"))
    finally:
        server.close()
        for task in trickling:
            task.cancel()
    assert observation.status is LiveStatus.UNVERIFIABLE
    assert observation.reason == "timeout"
    assert len(trickling) == 1  # one attempt, cut off mid-answer (the whole answer takes 16 s to trickle)
