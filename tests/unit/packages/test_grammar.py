"""The pypi: grammar: specs, filenames (before they become keys), index URLs, and the trust-key scheme."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from audit import bootstrap
from audit.adapters.file_store import FileTrustStore
from audit.app.trust_transfer import export_trust, import_trust
from audit.errors import UsageError
from audit.models import Digest, ImageRef
from audit.packages import (
    PackageSpec,
    display_name,
    normalise_project,
    package_key,
    parse_filename,
    parse_index_url,
    registry_key,
)
from audit.records import TrustedImage


@pytest.mark.parametrize(
    ("filename", "project", "version", "kind"),
    [
        ("demo_pkg-1.0-py3-none-any.whl", "demo-pkg", "1.0", "wheel"),
        ("demo_pkg-1.0-1-cp313-cp313-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", "demo-pkg", "1.0", "wheel"),
        ("Django-4.2.tar.gz", "django", "4.2", "sdist"),
        ("zope.interface-6.0.zip", "zope-interface", "6.0", "sdist"),
        ("demo_pkg-1!2.0rc1+local.7-py3-none-any.whl", "demo-pkg", "1!2.0rc1+local.7", "wheel"),
    ],
)
def test_wheel_and_sdist_names_parse(filename: str, project: str, version: str, kind: str) -> None:
    name = parse_filename(filename)
    assert name is not None
    assert (name.project, name.version, name.kind) == (project, version, kind)


@pytest.mark.parametrize(
    "filename",
    [
        "",
        "../demo_pkg-1.0.tar.gz",
        "demo_pkg-1.0-py3-none-any.whl#x",
        "demo pkg-1.0.tar.gz",
        "demo_pkg-1.0-py3-any.whl",  # too few wheel parts
        "demo_pkg-1.0-x-py3-none-any.whl",  # a build tag must start with a digit
        "demo_pkg-1.0.exe",
        "demo_pkg.tar.gz",
        "demo\x1b[2J-1.0.tar.gz",
        "$watch-1.0.tar.gz",
        "a" * 250 + "-1.0.tar.gz",
    ],
)
def test_anything_else_is_not_a_distribution_filename(filename: str) -> None:
    assert parse_filename(filename) is None


def test_a_spec_names_a_normalised_project_and_a_version() -> None:
    assert PackageSpec.parse("pypi:Demo_Pkg==1.0", require_version=True) == PackageSpec("demo-pkg", "1.0")
    assert PackageSpec.parse("pypi:demo.pkg", require_version=False) == PackageSpec("demo-pkg", None)
    assert normalise_project("A__b.-C") == "a-b-c"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pypi:demo", "it needs ==VERSION"),
        ("pypi:demo>=1", "invalid project name"),
        ("pypi:==1.0", "invalid project name"),
        ("pypi:demo==1.0; rm -rf /", "invalid version"),
        ("demo==1.0", "it must start with pypi:"),
    ],
)
def test_a_bad_spec_is_a_usage_error_with_a_hint(text: str, message: str) -> None:
    with pytest.raises(UsageError) as error:
        PackageSpec.parse(text, require_version=True)
    assert message in error.value.message
    assert error.value.hint  # says what to write instead


def test_index_urls_are_normalised_and_plain_http_needs_the_insecure_list() -> None:
    assert parse_index_url("https://PyPI.example.com/simple/") == "https://pypi.example.com/simple"
    assert parse_index_url("http://127.0.0.1:8080/simple", insecure_hosts=frozenset({"127.0.0.1"})) == (
        "http://127.0.0.1:8080/simple"
    )
    for bad, message in (
        ("http://pypi.example.com/simple", "plain http"),
        ("https://user:secret@pypi.example.com/simple", "do not put credentials in the URL"),
        ("https://pypi.example.com/simple?x=1", "only scheme, host, port and a plain path"),
        ("ftp://pypi.example.com/simple", "needs an http(s) scheme"),
        ("https://pypi.example.com/a/../simple", "only scheme, host, port and a plain path"),
    ):
        with pytest.raises(UsageError) as error:
            parse_index_url(bad)
        assert message in error.value.message
        assert "secret" not in error.value.message


def test_package_files_are_keyed_beside_images_without_colliding() -> None:
    registry = registry_key("https://pypi.org/simple")
    ref = ImageRef(registry=registry, repository="demo-pkg", tag="demo_pkg-1.0-py3-none-any.whl")
    assert ref.image == "pypi:https://pypi.org/simple/demo-pkg"
    assert ref.familiar == "pypi:demo-pkg/demo_pkg-1.0-py3-none-any.whl"
    assert display_name(registry_key("https://idx.example/simple"), "demo-pkg") == (
        "pypi:https://idx.example/simple/demo-pkg"
    )
    # No image reference can produce a registry starting with "pypi:" (hosts have no ':' before a port).
    with pytest.raises(UsageError):
        ImageRef.parse("pypi:https://pypi.org/simple/demo-pkg:1.0")


def test_people_name_package_projects_for_run_repository_and_the_lambda_event() -> None:
    assert bootstrap.image_name("pypi:Demo_Pkg") == "pypi:https://pypi.org/simple/demo-pkg"
    assert bootstrap.image_name("pypi:http://127.0.0.1:8080/root/dev/+simple/demo-pkg") == (
        "pypi:http://127.0.0.1:8080/root/dev/+simple/demo-pkg"
    )
    with pytest.raises(UsageError):
        bootstrap.image_name("pypi:demo pkg")


def test_package_records_survive_a_trust_export_and_import(tmp_path: Path) -> None:
    source = FileTrustStore(tmp_path / "a.json")
    record = TrustedImage(
        registry=registry_key("https://pypi.example.com/simple"),
        repository="demo-pkg",
        tag="demo_pkg-1.0-py3-none-any.whl",
        digest=Digest.parse("sha256:" + "a" * 64),
        source="https://ci.example/runs/1",
        recorded_at=datetime(2026, 11, 1, tzinfo=UTC),
    )
    source.record(record)
    for fmt in ("csv", "json"):
        target = FileTrustStore(tmp_path / f"b-{fmt}.json")
        import_trust(target, export_trust(source, fmt), fmt)
        assert target.load_all() == [record]


@pytest.mark.parametrize(
    ("registry", "repository", "tag", "problem"),
    [
        ("pypi:https://pypi.example.com/simple/", "demo-pkg", "demo_pkg-1.0.tar.gz", "not normalised"),
        ("pypi:ftp://pypi.example.com/simple", "demo-pkg", "demo_pkg-1.0.tar.gz", "http(s) scheme"),
        ("pypi:https://pypi.example.com/simple", "demo pkg", "demo_pkg-1.0.tar.gz", "invalid project name"),
        ("pypi:https://pypi.example.com/simple", "demo-pkg", "other-1.0.tar.gz", "no wheel or sdist filename of"),
        ("pypi:https://pypi.example.com/simple", "demo-pkg", "tag#1", "no wheel or sdist filename of"),
    ],
)
def test_an_imported_package_key_is_validated(registry: str, repository: str, tag: str, problem: str) -> None:
    with pytest.raises(UsageError) as error:
        package_key(registry, repository, tag)
    assert problem in error.value.message
