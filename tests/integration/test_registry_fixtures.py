"""Proves the registry test infrastructure against the real docker-registry binary, using plain httpx only."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import httpx
import pytest

from audit.models import MANIFEST_ACCEPT, MediaType
from tests.support.htpasswd import bcrypt_hash
from tests.support.local_registry import LocalRegistry
from tests.support.pusher import Credentials, ImageKind, PushError
from tests.support.registry_fixtures import PusherFactory, RegistryFactory
from tests.support.registry_process import RegistryProcess, RegistryStartError, TokenAuth
from tests.support.token_server import PULL, Account, TokenServer

pytestmark = pytest.mark.integration

KIND_MEDIA_TYPES: dict[ImageKind, MediaType] = {
    "docker": MediaType.DOCKER_MANIFEST,
    "oci": MediaType.OCI_MANIFEST,
    "oci-index": MediaType.OCI_INDEX,
    "docker-list": MediaType.DOCKER_LIST,
}


def head_manifest(
    registry: LocalRegistry, repository: str, reference: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    with httpx.Client(verify=registry.verify, trust_env=False) as client:
        return client.head(
            f"{registry.url}/v2/{repository}/manifests/{reference}",
            headers={"Accept": MANIFEST_ACCEPT, **(headers or {})},
        )


def fetch_token(
    token_server: TokenServer,
    registry: LocalRegistry,
    scope: str,
    credentials: Credentials | None,
) -> httpx.Response:
    with httpx.Client(verify=registry.verify, trust_env=False) as client:
        return client.get(
            token_server.realm, params={"service": token_server.service, "scope": scope}, auth=credentials
        )


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    return scheme, dict(re.findall(r'(\w+)="([^"]*)"', rest))


def jwt_part(token: str, index: int) -> dict[str, object]:
    part = token.split(".")[index]
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


# --- pushing every kind -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KIND_MEDIA_TYPES))
def test_each_manifest_kind_is_served_with_the_pushed_digest(
    registry: LocalRegistry, repository: str, kind: ImageKind
) -> None:
    image = registry.pusher.push_image(repository, "v1", kind)

    head = head_manifest(registry, repository, "v1")
    with httpx.Client(trust_env=False) as client:
        body = client.get(f"{registry.url}/v2/{repository}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT}).content

    assert head.status_code == 200
    assert head.headers["Docker-Content-Digest"] == image.digest
    assert head.headers["Content-Type"] == KIND_MEDIA_TYPES[kind] == image.media_type
    assert body == image.manifest
    assert "sha256:" + hashlib.sha256(body).hexdigest() == image.digest


@pytest.mark.parametrize("kind", ["oci-index", "docker-list"])
def test_index_children_are_pushed_per_platform(registry: LocalRegistry, repository: str, kind: ImageKind) -> None:
    platforms = ["linux/amd64", "linux/arm64/v8", "linux/arm/v7"]
    image = registry.pusher.push_image(repository, "multi", kind, platforms)

    index = json.loads(image.manifest)
    listed = {
        "/".join(filter(None, (m["platform"]["os"], m["platform"]["architecture"], m["platform"].get("variant")))): m[
            "digest"
        ]
        for m in index["manifests"]
    }
    assert list(image.platforms) == platforms
    assert listed == image.platforms
    assert len(set(image.platforms.values())) == 3
    for child_digest in image.platforms.values():
        child = head_manifest(registry, repository, child_digest)
        assert child.status_code == 200
        assert child.headers["Docker-Content-Digest"] == child_digest


def test_a_short_accept_gets_the_amd64_child_of_a_docker_list(registry: LocalRegistry, repository: str) -> None:
    # Confirms the fixture reproduces the registry behaviour the audit must guard against (REGISTRY-FACTS §2).
    image = registry.pusher.push_image(repository, "multi", "docker-list")

    head = head_manifest(registry, repository, "multi", {"Accept": MediaType.DOCKER_MANIFEST.value})

    assert head.headers["Docker-Content-Digest"] == image.platforms["linux/amd64"] != image.digest


def test_same_seed_gives_same_digest_and_other_content_differs(registry: LocalRegistry, repository: str) -> None:
    first = registry.pusher.push_image(repository, "a", "oci", seed="fixed")
    again = registry.pusher.push_image(repository, "b", "oci", seed="fixed")
    other = registry.pusher.push_image(repository, "c", "oci")

    assert first.digest == again.digest
    assert other.digest != first.digest


def test_delete_by_digest_gives_404_and_spares_other_images(registry: LocalRegistry, repository: str) -> None:
    doomed = registry.pusher.push_image(repository, "doomed", "docker")
    kept = registry.pusher.push_image(repository, "kept", "docker")

    registry.pusher.delete_manifest(repository, doomed.digest)

    assert head_manifest(registry, repository, "doomed").status_code == 404
    assert head_manifest(registry, repository, doomed.digest).status_code == 404
    assert head_manifest(registry, repository, "kept").headers["Docker-Content-Digest"] == kept.digest


@pytest.mark.parametrize("kind", ["docker", "oci-index"])
def test_tamper_changes_the_digest_behind_a_tag(registry: LocalRegistry, repository: str, kind: ImageKind) -> None:
    original = registry.pusher.push_image(repository, "1.0", kind)

    tampered = registry.pusher.tamper(repository, "1.0")

    head = head_manifest(registry, repository, "1.0")
    assert tampered.digest != original.digest
    assert tampered.media_type == original.media_type
    assert head.headers["Docker-Content-Digest"] == tampered.digest


def test_tag_puts_the_same_bytes_under_another_tag(registry: LocalRegistry, repository: str) -> None:
    image = registry.pusher.push_image(repository, "1.0", "oci-index")

    alias = registry.pusher.tag(image, "stable")

    assert alias.digest == image.digest
    assert head_manifest(registry, repository, "stable").headers["Docker-Content-Digest"] == image.digest


# --- token auth ---------------------------------------------------------------------------------------------


def test_token_registry_challenges_with_its_token_server_and_accepts_its_token(
    token_registry: LocalRegistry, repository: str
) -> None:
    assert token_registry.token_server is not None and token_registry.credentials is not None
    token_server = token_registry.token_server
    image = token_registry.pusher.push_image(repository, "v1", "docker")
    token_server.reset()

    challenged = head_manifest(token_registry, repository, "v1")
    scheme, params = parse_challenge(challenged.headers["WWW-Authenticate"])
    issued = fetch_token(token_server, token_registry, params["scope"], token_registry.credentials)
    token = issued.json()["token"]
    served = head_manifest(token_registry, repository, "v1", {"Authorization": f"Bearer {token}"})

    assert challenged.status_code == 401
    assert scheme == "Bearer"
    assert params == {
        "realm": token_server.realm,
        "service": token_server.service,
        "scope": f"repository:{repository}:pull",
    }
    assert token_server.realm.startswith("https://")
    assert issued.status_code == 200
    assert set(issued.json()) == {"token", "access_token", "expires_in", "issued_at"}
    assert served.status_code == 200
    assert served.headers["Docker-Content-Digest"] == image.digest
    assert token_server.count() == 1
    assert token_server.count(f"repository:{repository}:pull") == 1
    assert token_server.count_for_repository(repository) == 1
    [record] = token_server.requests
    assert (record.authorization, record.username, record.status) == ("basic", "auditor", 200)
    assert token_registry.credentials.password not in repr(token_server.requests)


def test_token_claims_follow_the_distribution_spec(token_registry: LocalRegistry, repository: str) -> None:
    assert token_registry.token_server is not None
    token_server = token_registry.token_server
    scope = f"repository:{repository}:pull,push"

    token = fetch_token(token_server, token_registry, scope, token_registry.pusher_credentials).json()["token"]

    header, claims = jwt_part(token, 0), jwt_part(token, 1)
    assert header["alg"] == "RS256"
    assert "x5c" in header
    assert claims["iss"] == token_server.issuer
    assert claims["aud"] == token_server.service
    assert claims["sub"] == "pusher"
    assert isinstance(claims["exp"], int) and isinstance(claims["nbf"], int) and isinstance(claims["iat"], int)
    assert claims["exp"] - claims["iat"] == token_server.expires_in
    assert claims["jti"]
    assert claims["access"] == [{"type": "repository", "name": repository, "actions": ["pull", "push"]}]


def test_token_server_refuses_bad_or_missing_credentials(token_registry: LocalRegistry, repository: str) -> None:
    assert token_registry.token_server is not None and token_registry.credentials is not None
    token_server = token_registry.token_server
    token_server.reset()
    scope = f"repository:{repository}:pull"

    anonymous = fetch_token(token_server, token_registry, scope, None)
    wrong = fetch_token(token_server, token_registry, scope, Credentials("auditor", "not-the-password"))

    assert anonymous.status_code == 401
    assert wrong.status_code == 401
    assert [(r.authorization, r.status) for r in token_server.requests] == [("none", 401), ("basic", 401)]


def test_a_pull_token_cannot_push(token_registry: LocalRegistry, repository: str) -> None:
    assert token_registry.token_server is not None
    scope = f"repository:{repository}:pull,push"
    pull_only = fetch_token(token_registry.token_server, token_registry, scope, token_registry.credentials)

    claims = jwt_part(pull_only.json()["token"], 1)
    with httpx.Client(verify=token_registry.verify, trust_env=False) as client:
        refused = client.post(
            f"{token_registry.url}/v2/{repository}/blobs/uploads/",
            headers={"Authorization": f"Bearer {pull_only.json()['token']}"},
        )

    assert claims["access"] == [{"type": "repository", "name": repository, "actions": ["pull"]}]
    assert refused.status_code == 401
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]


def test_a_token_for_another_audience_is_rejected(token_registry: LocalRegistry, repository: str) -> None:
    assert token_registry.token_server is not None
    token_registry.pusher.push_image(repository, "v1", "docker")
    forged = token_registry.token_server.mint("auditor", [f"repository:{repository}:pull"], audience="elsewhere")

    refused = head_manifest(token_registry, repository, "v1", {"Authorization": f"Bearer {forged}"})

    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]


def test_pusher_can_fetch_its_tokens_over_http(
    token_registry: LocalRegistry, repository: str, pusher: PusherFactory
) -> None:
    assert token_registry.token_server is not None
    token_registry.token_server.reset()

    image = pusher(token_registry, fetch_tokens=True).push_image(repository, "v1", "oci")

    assert token_registry.token_server.count(f"repository:{repository}:pull,push") >= 1
    assert {r.username for r in token_registry.token_server.requests} == {"pusher"}
    assert image.digest


def test_pusher_with_pull_only_credentials_is_refused(
    token_registry: LocalRegistry, repository: str, pusher: PusherFactory
) -> None:
    reader = pusher(token_registry, token_registry.credentials, fetch_tokens=True)

    with pytest.raises(PushError, match="HTTP 401"):
        reader.push_image(repository, "v1", "docker")


def test_token_auth_over_plain_http_with_kid_and_per_repository_grants(
    registry_factory: RegistryFactory,
) -> None:
    team = Credentials("team-reader", "team-secret")
    running = registry_factory(
        auth="token",
        tls=False,
        key_reference="kid",
        accounts={team.username: Account(team.password, {"team/*": PULL})},
    )
    assert running.token_server is not None
    token_server = running.token_server
    running.pusher.push_image("team/app", "v1", "docker")
    other = running.pusher.push_image("other/app", "v1", "docker")

    team_token = fetch_token(token_server, running, "repository:team/app:pull", team).json()["token"]
    other_token = fetch_token(token_server, running, "repository:other/app:pull", team).json()["token"]
    admin_token = fetch_token(token_server, running, "repository:other/app:pull", running.credentials).json()["token"]

    assert running.insecure and running.url.startswith("http://")
    assert token_server.realm.startswith("http://")
    assert "kid" in jwt_part(team_token, 0) and "x5c" not in jwt_part(team_token, 0)
    assert head_manifest(running, "team/app", "v1", {"Authorization": f"Bearer {team_token}"}).status_code == 200
    assert head_manifest(running, "other/app", "v1", {"Authorization": f"Bearer {other_token}"}).status_code == 401
    admin_head = head_manifest(running, "other/app", "v1", {"Authorization": f"Bearer {admin_token}"})
    assert admin_head.headers["Docker-Content-Digest"] == other.digest


def test_token_server_anonymous_pull_when_enabled(registry_factory: RegistryFactory) -> None:
    running = registry_factory(auth="token", tls=True, token_server_tls=False, anonymous_pull=True)
    assert running.token_server is not None
    image = running.pusher.push_image("public/app", "v1", "docker")

    token = fetch_token(running.token_server, running, "repository:public/app:pull", None).json()["token"]

    served = head_manifest(running, "public/app", "v1", {"Authorization": f"Bearer {token}"})
    assert served.headers["Docker-Content-Digest"] == image.digest
    assert [r.authorization for r in running.token_server.requests] == ["none"]


def test_token_server_fails_on_demand_then_recovers(token_registry: LocalRegistry, repository: str) -> None:
    assert token_registry.token_server is not None
    token_server = token_registry.token_server
    token_server.reset()
    token_server.fail_next(2)
    scope = f"repository:{repository}:pull"

    statuses = [fetch_token(token_server, token_registry, scope, token_registry.credentials).status_code for _ in "abc"]

    assert statuses == [503, 503, 200]
    assert token_server.count(scope) == 3


def test_token_server_expires_in_is_configurable(registry_factory: RegistryFactory) -> None:
    running = registry_factory(auth="token", expires_in=None)
    assert running.token_server is not None
    token_server = running.token_server

    without = fetch_token(token_server, running, "repository:a/b:pull", running.credentials).json()
    token_server.expires_in = 90
    with_ninety = fetch_token(token_server, running, "repository:a/b:pull", running.credentials).json()

    assert "expires_in" not in without
    assert with_ninety["expires_in"] == 90
    assert jwt_part(with_ninety["token"], 1)["exp"] == jwt_part(with_ninety["token"], 1)["iat"] + 90  # type: ignore[operator]


def test_token_server_password_and_refresh_token_grants(token_registry: LocalRegistry, repository: str) -> None:
    assert token_registry.token_server is not None and token_registry.credentials is not None
    token_server = token_registry.token_server
    image = token_registry.pusher.push_image(repository, "v1", "docker")
    scope = f"repository:{repository}:pull"
    form = {
        "grant_type": "password",
        "service": token_server.service,
        "scope": scope,
        "client_id": "digest-audit-tests",
        "access_type": "offline",
        "username": token_registry.credentials.username,
        "password": token_registry.credentials.password,
    }

    with httpx.Client(verify=token_registry.verify, trust_env=False) as client:
        by_password = client.post(token_server.realm, data=form).json()
        refreshed = client.post(
            token_server.realm,
            data={
                "grant_type": "refresh_token",
                "service": token_server.service,
                "scope": scope,
                "refresh_token": by_password["refresh_token"],
            },
        ).json()
        bad_refresh = client.post(
            token_server.realm,
            data={"grant_type": "refresh_token", "service": token_server.service, "refresh_token": "nope"},
        )

    served = head_manifest(token_registry, repository, "v1", {"Authorization": f"Bearer {refreshed['access_token']}"})
    assert served.headers["Docker-Content-Digest"] == image.digest
    assert bad_refresh.status_code == 401


# --- htpasswd and TLS ---------------------------------------------------------------------------------------


def test_basic_registry_requires_the_htpasswd_credentials(basic_registry: LocalRegistry, repository: str) -> None:
    assert basic_registry.credentials is not None
    image = basic_registry.pusher.push_image(repository, "v1", "oci")
    username = basic_registry.credentials.username

    with httpx.Client(verify=basic_registry.verify, trust_env=False) as client:
        url = f"{basic_registry.url}/v2/{repository}/manifests/v1"
        anonymous = client.head(url, headers={"Accept": MANIFEST_ACCEPT})
        wrong = client.head(url, headers={"Accept": MANIFEST_ACCEPT}, auth=(username, "wrong"))
        right = client.head(url, headers={"Accept": MANIFEST_ACCEPT}, auth=basic_registry.credentials)

    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert wrong.status_code == 401
    assert right.status_code == 200
    assert right.headers["Docker-Content-Digest"] == image.digest


def test_tls_registry_needs_the_test_ca(basic_registry: LocalRegistry) -> None:
    assert basic_registry.ca_file is not None and basic_registry.ca_file.is_file()
    assert not basic_registry.insecure and basic_registry.url.startswith("https://127.0.0.1:")

    with httpx.Client(trust_env=False) as untrusting, pytest.raises(httpx.ConnectError):
        untrusting.get(f"{basic_registry.url}/v2/")
    with httpx.Client(verify=basic_registry.verify, trust_env=False) as trusting:
        assert trusting.get(f"{basic_registry.url}/v2/", auth=basic_registry.credentials).status_code == 200


def test_htpasswd_over_plain_http(registry_factory: RegistryFactory) -> None:
    running = registry_factory(auth="basic", tls=False)
    image = running.pusher.push_image("plain/app", "v1", "docker-list")

    served = head_manifest(running, "plain/app", "v1", {"Authorization": _basic(running.credentials)})

    assert running.insecure and running.ca_file is None
    assert served.headers["Docker-Content-Digest"] == image.digest


def _basic(credentials: Credentials | None) -> str:
    assert credentials is not None
    return "Basic " + base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()


def test_bcrypt_hash_matches_the_openbsd_test_vector() -> None:
    assert bcrypt_hash("U*U", cost=5, salt="CCCCCCCCCCCCCCCCCCCCC.") == (
        "$2y$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"
    )


# --- process lifecycle --------------------------------------------------------------------------------------


def test_startup_failure_reports_the_log_tail(tmp_path: Path) -> None:
    broken = RegistryProcess(
        tmp_path / "broken",
        auth=TokenAuth(realm="http://127.0.0.1:9/token", service="s", issuer="i", rootcertbundle=tmp_path / "none"),
    )

    with pytest.raises(RegistryStartError, match=r"root certificate bundle"):
        broken.start()
    assert not broken.is_running


def test_stopping_frees_the_port(tmp_path: Path) -> None:
    with RegistryProcess(tmp_path / "short-lived") as process:
        url = process.url
        with httpx.Client(trust_env=False) as client:
            assert client.get(f"{url}/v2/").status_code == 200

    assert not process.is_running
    with httpx.Client(trust_env=False) as client, pytest.raises(httpx.ConnectError):
        client.get(f"{url}/v2/")
