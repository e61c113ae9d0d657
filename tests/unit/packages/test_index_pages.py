"""Parsing what an index serves (untrusted): PEP 691 JSON and PEP 503 HTML pages, bounded, login pages refused."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from audit.adapters.package_index import (
    CodeArtifactCredentials,
    IndexSettings,
    NetrcCredentials,
    basic_authorization,
    codeartifact_domain,
    parse_html_page,
    parse_json_page,
)
from audit.adapters.registry import Credential
from audit.errors import CredentialsError, PackageIndexError

PAGE = "https://pypi.example.com/simple/demo-pkg/"
HEX = "ab" * 32


def html(body: str, title: str = "Links for demo-pkg") -> bytes:
    return f"<!DOCTYPE html><html><head><title>{title}</title></head><body>{body}</body></html>".encode()


def test_html_anchors_give_filenames_hashes_and_yanked() -> None:
    page = parse_html_page(
        html(
            f'<a href="../../files/demo_pkg-1.0-py3-none-any.whl#sha256={HEX}" data-yanked="bad">x</a>'
            f'<a href="https://files.example/demo_pkg-1.0.tar.gz#md5=0123">demo_pkg-1.0.tar.gz</a>'
            '<a href="/files/evil%0a.whl">evil</a>'
        ),
        project="demo-pkg",
        page_url=PAGE,
        settings=IndexSettings(),
    )
    wheel, sdist = page.files
    assert (wheel.filename, str(wheel.sha256), wheel.yanked) == (
        "demo_pkg-1.0-py3-none-any.whl",
        f"sha256:{HEX}",
        "bad",
    )
    assert wheel.url == "https://pypi.example.com/files/demo_pkg-1.0-py3-none-any.whl"
    assert (sdist.sha256, sdist.yanked) == (None, None)  # md5 only: no sha256 to trust
    assert page.invalid == ("evil\\x0a.whl",)  # escaped, never a key
    assert (page.api, page.truncated) == ("html", False)


def test_html_pages_are_bounded_in_files() -> None:
    anchors = "".join(f'<a href="/f/demo_pkg-1.{n}.tar.gz">x</a>' for n in range(50))
    page = parse_html_page(html(anchors), project="demo-pkg", page_url=PAGE, settings=IndexSettings(max_files=10))
    assert (len(page.files), page.truncated) == (10, True)


@pytest.mark.parametrize(
    "body",
    [
        html('<form method="post"><input name="user"><input type="PASSWORD" name="pw"></form>', title="Sign in"),
        html("<p>Welcome to the corporate portal</p>", title="Portal"),
    ],
    ids=["password-form", "no-files-and-not-an-index"],
)
def test_an_html_page_that_is_not_a_simple_index_is_refused(body: bytes) -> None:
    with pytest.raises(PackageIndexError, match="a login page"):
        parse_html_page(body, project="demo-pkg", page_url=PAGE, settings=IndexSettings())


def test_an_empty_simple_page_is_an_empty_project() -> None:
    page = parse_html_page(html(""), project="demo-pkg", page_url=PAGE, settings=IndexSettings())
    assert page.files == ()


def test_json_pages_carry_pep_592_and_pep_700_fields() -> None:
    document = {
        "meta": {"api-version": "1.1"},
        "name": "demo-pkg",
        "versions": ["1.0"],
        "files": [
            {
                "filename": "demo_pkg-1.0.tar.gz",
                "url": "../../files/demo_pkg-1.0.tar.gz",
                "hashes": {"sha256": HEX},
                "yanked": True,
                "size": 10,
                "upload-time": "2026-11-20T10:00:00Z",
            },
            {"filename": "demo_pkg-1.0-py3-none-any.whl", "url": "/files/other.whl", "hashes": {"sha256": "zz"}},
            {"filename": 7},
        ],
    }
    page = parse_json_page(json.dumps(document).encode(), project="demo-pkg", page_url=PAGE, settings=IndexSettings())
    [sdist] = page.files
    assert (sdist.yanked, sdist.size, sdist.upload_time, str(sdist.sha256)) == (
        "",
        10,
        "2026-11-20T10:00:00Z",
        f"sha256:{HEX}",
    )
    assert page.versions == ("1.0",)
    # A filename that its URL contradicts, and an entry without one, are reported, never keyed.
    assert len(page.invalid) == 2


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"meta": {"api-version": "2.0"}, "files": []}'])
def test_a_json_page_that_is_not_pep_691_is_refused(body: bytes) -> None:
    with pytest.raises(PackageIndexError):
        parse_json_page(body, project="demo-pkg", page_url=PAGE, settings=IndexSettings())


def test_json_pages_are_bounded_in_files() -> None:
    files = [
        {"filename": f"demo_pkg-1.{n}.tar.gz", "url": f"/f/demo_pkg-1.{n}.tar.gz", "hashes": {}} for n in range(30)
    ]
    body = json.dumps({"meta": {"api-version": "1.0"}, "files": files}).encode()
    page = parse_json_page(body, project="demo-pkg", page_url=PAGE, settings=IndexSettings(max_files=5))
    assert (len(page.files), page.truncated) == (5, True)


def test_index_credentials_are_basic_and_tokens_go_as_the_password() -> None:
    assert basic_authorization(Credential.basic("aws", "t0k")) == "Basic YXdzOnQwaw=="
    assert basic_authorization(Credential.token("pypi-abc")) == "Basic X190b2tlbl9fOnB5cGktYWJj"  # __token__:pypi-abc


def test_codeartifact_hosts_are_recognised() -> None:
    host = "my-domain-111122223333.d.codeartifact.eu-west-1.amazonaws.com"
    assert codeartifact_domain(host) == ("my-domain", "111122223333", "eu-west-1")
    assert codeartifact_domain("pypi.org") is None
    assert codeartifact_domain("x-111122223333.d.codeartifact.eu-west-1.amazonaws.com.evil.example") is None


class FakeCodeArtifact:
    """Stands in for the boto3 client: counts token requests, can fail like botocore does."""

    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []
        self.fail = False

    def get_authorization_token(self, **kwargs: object) -> dict[str, object]:
        self.calls.append(kwargs)
        if self.fail:
            raise RuntimeError("AccessDeniedException: not authorized to perform codeartifact:GetAuthorizationToken")
        return {"authorizationToken": "ca-token", "expiration": datetime.fromtimestamp(2_000, UTC)}


async def test_codeartifact_tokens_are_fetched_for_their_domain_and_cached() -> None:
    fake = FakeCodeArtifact()
    regions: list[str] = []

    def client_for(region: str) -> Any:
        regions.append(region)
        return fake

    provider = CodeArtifactCredentials(client_for, clock=lambda: 1_000.0)
    host = "team-111122223333.d.codeartifact.eu-west-1.amazonaws.com"
    first = await provider.get(host)
    again = await provider.get(host)
    assert first is not None and again is first
    assert basic_authorization(first) == "Basic " + base64.b64encode(b"aws:ca-token").decode()
    assert fake.calls == [{"domain": "team", "domainOwner": "111122223333", "durationSeconds": 900}]
    assert regions == ["eu-west-1"]
    assert await provider.get("pypi.org") is None
    assert "ca-token" not in repr(first)


async def test_a_refused_codeartifact_token_is_a_credentials_error_naming_the_permission() -> None:
    fake = FakeCodeArtifact()
    fake.fail = True
    provider = CodeArtifactCredentials(lambda region: fake)  # type: ignore[arg-type,return-value]
    with pytest.raises(CredentialsError) as error:
        await provider.get("team-111122223333.d.codeartifact.eu-west-1.amazonaws.com")
    assert "codeartifact:GetAuthorizationToken" in error.value.hint


async def test_netrc_gives_index_credentials_by_host(tmp_path: Path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine pypi.example.com login reader password s3cret\n")
    netrc.chmod(0o600)
    provider = NetrcCredentials(netrc)
    found = await provider.get("pypi.example.com")
    assert found is not None and basic_authorization(found) == "Basic " + base64.b64encode(b"reader:s3cret").decode()
    assert await provider.get("other.example.com") is None
    assert await NetrcCredentials(tmp_path / "absent").get("pypi.example.com") is None
