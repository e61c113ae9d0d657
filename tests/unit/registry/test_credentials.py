"""Credential providers: docker config.json (auths, helpers), ECR, a static JSON secret, chains; no leaks."""

from __future__ import annotations

import base64
import json
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest
from botocore.exceptions import ClientError

from audit.adapters.registry import (
    ChainCredentials,
    Credential,
    DockerConfigCredentials,
    EcrCredentials,
    StaticCredentials,
)
from audit.adapters.registry.auth import Token
from audit.errors import CredentialsError

if TYPE_CHECKING:
    from mypy_boto3_ecr import ECRClient

HUB = "registry-1.docker.io"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_config(directory: Path, data: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(data))
    return directory


# -- Credential


def test_credential_repr_never_shows_secrets() -> None:
    basic = Credential.basic("alice", "hunter2-secret")
    token = Credential.token("refresh-xyz-secret", username="alice")
    for credential in (basic, token):
        for text in (repr(credential), str(credential), f"{credential}", repr([credential])):
            assert "secret" not in text
            assert "alice" in text
    assert repr(basic) == "Credential(username='alice', password=<redacted>)"


def test_credential_needs_a_secret() -> None:
    with pytest.raises(CredentialsError):
        Credential(username="alice")


def test_basic_authorization_header() -> None:
    assert Credential.basic("alice", "pw").basic_authorization() == "Basic " + b64("alice:pw")
    assert Credential.token("t").basic_authorization() is None


# -- docker config.json


@pytest.mark.parametrize("key", ["https://index.docker.io/v1/", "index.docker.io", "docker.io", HUB])
async def test_docker_hub_keys(tmp_path: Path, key: str) -> None:
    write_config(tmp_path, {"auths": {key: {"auth": b64("hubuser:hubpass")}}})
    provider = DockerConfigCredentials(tmp_path, environ={})
    assert await provider.get(HUB) == Credential.basic("hubuser", "hubpass")
    assert await provider.get("ghcr.io") is None


@pytest.mark.parametrize("key", ["ghcr.io", "https://ghcr.io", "https://ghcr.io/v2/", "GHCR.io"])
async def test_keys_with_scheme_and_path(tmp_path: Path, key: str) -> None:
    write_config(tmp_path, {"auths": {key: {"username": "bot", "password": "pw"}}})
    provider = DockerConfigCredentials(tmp_path, environ={})
    assert await provider.get("ghcr.io") == Credential.basic("bot", "pw")


async def test_port_is_part_of_the_key(tmp_path: Path) -> None:
    write_config(tmp_path, {"auths": {"localhost:5000": {"auth": b64("u:p")}}})
    provider = DockerConfigCredentials(tmp_path, environ={})
    assert await provider.get("localhost:5000") == Credential.basic("u", "p")
    assert await provider.get("localhost:5001") is None


async def test_identity_token_entry(tmp_path: Path) -> None:
    write_config(tmp_path, {"auths": {"registry.example": {"username": "alice", "identitytoken": "idt"}}})
    credential = await DockerConfigCredentials(tmp_path, environ={}).get("registry.example")
    assert credential == Credential.token("idt", username="alice")


async def test_empty_entry_and_missing_file_mean_anonymous(tmp_path: Path) -> None:
    write_config(tmp_path / "a", {"auths": {"registry.example": {}}})
    assert await DockerConfigCredentials(tmp_path / "a", environ={}).get("registry.example") is None
    assert await DockerConfigCredentials(tmp_path / "missing", environ={}).get("registry.example") is None


async def test_docker_config_environment_variable(tmp_path: Path) -> None:
    write_config(tmp_path / "cfg", {"auths": {"registry.example": {"auth": b64("u:p")}}})
    provider = DockerConfigCredentials(environ={"DOCKER_CONFIG": str(tmp_path / "cfg")})
    assert provider.path == tmp_path / "cfg" / "config.json"
    assert await provider.get("registry.example") == Credential.basic("u", "p")


async def test_malformed_auth_is_an_error_without_the_secret(tmp_path: Path) -> None:
    write_config(tmp_path, {"auths": {"registry.example": {"auth": "not base64 secretvalue!"}}})
    with pytest.raises(CredentialsError) as caught:
        await DockerConfigCredentials(tmp_path, environ={}).get("registry.example")
    assert "secretvalue" not in caught.value.diagnostics()
    assert "registry.example" in caught.value.message


async def test_invalid_json_is_an_error(tmp_path: Path) -> None:
    tmp_path.joinpath("config.json").write_text("{nope")
    with pytest.raises(CredentialsError) as caught:
        await DockerConfigCredentials(tmp_path, environ={}).get("registry.example")
    assert "not valid JSON" in caught.value.message
    assert caught.value.hint


HELPER = """#!/bin/sh
read -r server
echo "$server" >> "{log}"
case "$server" in
  registry.example:5000) printf '{{"ServerURL":"%s","Username":"helper-user","Secret":"helper-secret"}}' "$server" ;;
  https://index.docker.io/v1/) printf '{{"ServerURL":"%s","Username":"<token>","Secret":"hub-identity"}}' "$server" ;;
  broken.example) echo "helper exploded; secret=do-not-print" >&2; exit 3 ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""


@pytest.fixture
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake `docker-credential-fake` on PATH; returns the log of server URLs it was asked for."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "helper.log"
    script = bin_dir / "docker-credential-fake"
    script.write_text(HELPER.format(log=log))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return log


def asked(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


async def test_cred_helpers_entry(tmp_path: Path, helper: Path) -> None:
    write_config(tmp_path / "cfg", {"credHelpers": {"registry.example:5000": "fake"}})
    provider = DockerConfigCredentials(tmp_path / "cfg")
    assert await provider.get("registry.example:5000") == Credential.basic("helper-user", "helper-secret")
    assert asked(helper) == ["registry.example:5000"]
    # The answer is cached: no second process for the next request.
    assert await provider.get("registry.example:5000") == Credential.basic("helper-user", "helper-secret")
    assert asked(helper) == ["registry.example:5000"]


async def test_helper_token_username_means_identity_token(tmp_path: Path, helper: Path) -> None:
    write_config(tmp_path / "cfg", {"credsStore": "fake"})
    provider = DockerConfigCredentials(tmp_path / "cfg")
    assert await provider.get(HUB) == Credential.token("hub-identity")
    assert asked(helper) == ["https://index.docker.io/v1/"]


async def test_helper_not_found_falls_back_to_auths(tmp_path: Path, helper: Path) -> None:
    write_config(
        tmp_path / "cfg",
        {"credsStore": "fake", "auths": {"other.example": {"auth": b64("file:pw")}, "third.example": {}}},
    )
    provider = DockerConfigCredentials(tmp_path / "cfg")
    assert await provider.get("other.example") == Credential.basic("file", "pw")
    assert await provider.get("third.example") is None
    assert asked(helper) == ["other.example", "third.example"]


async def test_cred_helpers_beat_creds_store(tmp_path: Path, helper: Path) -> None:
    write_config(tmp_path / "cfg", {"credsStore": "missing-store", "credHelpers": {"registry.example:5000": "fake"}})
    provider = DockerConfigCredentials(tmp_path / "cfg")
    assert await provider.get("registry.example:5000") == Credential.basic("helper-user", "helper-secret")
    with pytest.raises(CredentialsError) as caught:
        await provider.get("elsewhere.example")
    assert "docker-credential-missing-store" in caught.value.message
    assert "not on PATH" in caught.value.message


async def test_failing_helper_is_an_error_that_does_not_echo_its_output(tmp_path: Path, helper: Path) -> None:
    write_config(tmp_path / "cfg", {"credHelpers": {"broken.example": "fake"}})
    with pytest.raises(CredentialsError) as caught:
        await DockerConfigCredentials(tmp_path / "cfg").get("broken.example")
    assert "exit code 3" in caught.value.message
    assert "do-not-print" not in caught.value.diagnostics()


def test_docker_config_repr_names_the_file_only(tmp_path: Path) -> None:
    assert (
        repr(DockerConfigCredentials(tmp_path, environ={})) == f"DockerConfigCredentials(path='{tmp_path}/config.json')"
    )


# -- ECR


class FakeEcr:
    def __init__(self, *, expires: datetime, fail: str | None = None) -> None:
        self.calls = 0
        self.expires = expires
        self.fail = fail

    def get_authorization_token(self) -> dict[str, Any]:
        self.calls += 1
        if self.fail:
            raise ClientError({"Error": {"Code": self.fail, "Message": "nope"}}, "GetAuthorizationToken")
        return {
            "authorizationData": [
                {
                    "authorizationToken": b64(f"AWS:ecr-password-{self.calls}"),
                    "expiresAt": self.expires,
                    "proxyEndpoint": "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com",
                }
            ]
        }


ECR_HOST = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"


def ecr_provider(fake: FakeEcr, now: list[float]) -> tuple[EcrCredentials, list[str]]:
    regions: list[str] = []

    def factory(region: str) -> ECRClient:
        regions.append(region)
        return cast("ECRClient", fake)

    return EcrCredentials(factory, margin=600, wall_clock=lambda: now[0]), regions


async def test_ecr_token_is_fetched_for_the_hosts_region_and_cached() -> None:
    expires = datetime(2030, 1, 1, 12, tzinfo=UTC)
    fake = FakeEcr(expires=expires)
    now = [expires.timestamp() - 12 * 3600]
    provider, regions = ecr_provider(fake, now)
    assert await provider.get(ECR_HOST) == Credential.basic("AWS", "ecr-password-1")
    now[0] = expires.timestamp() - 601
    assert await provider.get(ECR_HOST) == Credential.basic("AWS", "ecr-password-1")
    assert fake.calls == 1
    now[0] = expires.timestamp() - 599  # inside the margin: renew
    assert await provider.get(ECR_HOST) == Credential.basic("AWS", "ecr-password-2")
    assert regions == ["eu-west-1"]
    assert "ecr-password" not in repr(provider)


async def test_ecr_ignores_other_hosts() -> None:
    fake = FakeEcr(expires=datetime(2030, 1, 1, tzinfo=UTC))
    provider, regions = ecr_provider(fake, [0.0])
    assert await provider.get("ghcr.io") is None
    assert await provider.get("123456789012.dkr.ecr.eu-west-1.amazonaws.com.evil.example") is None
    assert regions == []


async def test_ecr_failure_is_a_credentials_error() -> None:
    fake = FakeEcr(expires=datetime(2030, 1, 1, tzinfo=UTC), fail="AccessDeniedException")
    provider, _ = ecr_provider(fake, [0.0])
    with pytest.raises(CredentialsError) as caught:
        await provider.get(ECR_HOST)
    assert "AccessDeniedException" in caught.value.message
    assert "eu-west-1" in caught.value.message


# -- static JSON (the Lambda's secret)


async def test_static_credentials_from_json() -> None:
    secret = json.dumps(
        {
            "ghcr.io": {"username": "bot", "password": "pw1"},
            "https://index.docker.io/v1/": {"auth": b64("hub:pw2")},
            "registry.example:5000": {"identitytoken": "idt"},
        }
    )
    provider = StaticCredentials.from_json(secret)
    assert await provider.get("ghcr.io") == Credential.basic("bot", "pw1")
    assert await provider.get(HUB) == Credential.basic("hub", "pw2")
    assert await provider.get("registry.example:5000") == Credential.token("idt")
    assert await provider.get("quay.io") is None
    assert "pw1" not in repr(provider)


async def test_static_credentials_accept_a_docker_config() -> None:
    provider = StaticCredentials.from_json(json.dumps({"auths": {"ghcr.io": {"auth": b64("bot:pw")}}}))
    assert await provider.get("ghcr.io") == Credential.basic("bot", "pw")


@pytest.mark.parametrize(
    "secret",
    ["not json", "[1, 2]", '{"ghcr.io": "pw"}', '{"ghcr.io": {}}', '{"ghcr.io": {"auth": "!!secretvalue"}}'],
)
def test_static_credentials_reject_bad_input_without_echoing_it(secret: str) -> None:
    with pytest.raises(CredentialsError) as caught:
        StaticCredentials.from_json(secret)
    assert "secretvalue" not in caught.value.diagnostics()


def test_static_credentials_name_their_source_and_the_fix_for_text_that_is_not_json() -> None:
    with pytest.raises(CredentialsError) as caught:
        StaticCredentials.from_json("{'ghcr.io': 1}", source="registry credentials secret prod/registry")
    assert caught.value.message == "registry credentials secret prod/registry is not valid JSON"
    assert caught.value.hint == 'store {"registry.example.com": {"username": "...", "password": "..."}}'


# -- chain


async def test_chain_returns_the_first_answer() -> None:
    first = StaticCredentials({"a.example": Credential.basic("one", "1")})
    second = StaticCredentials({"a.example": Credential.basic("two", "2"), "b.example": Credential.basic("b", "b")})
    chain = ChainCredentials(first, second)
    assert await chain.get("a.example") == Credential.basic("one", "1")
    assert await chain.get("b.example") == Credential.basic("b", "b")
    assert await chain.get("c.example") is None


def test_token_repr_hides_the_token() -> None:
    token = Token(header="Bearer very-secret-token", renew_at=1.0, expires_at=2.0)
    assert "very-secret-token" not in repr(token)
    assert "very-secret-token" not in str(token)
