"""Platform matching as `docker pull --platform` does it, checked against indexes real registries served."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from audit.adapters.registry.manifest import parse_manifest
from audit.errors import UsageError
from audit.models import Digest, MediaType
from audit.platforms import Platform, select_platform

CORPUS = Path(__file__).resolve().parents[3].parent / "shared" / "real-manifests"


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("linux/amd64", "linux/amd64"),
        ("linux/x86_64", "linux/amd64"),
        ("linux/amd64/v1", "linux/amd64"),
        ("linux/amd64/v3", "linux/amd64/v3"),
        ("linux/arm64", "linux/arm64"),
        ("linux/arm64/v8", "linux/arm64"),
        ("linux/aarch64", "linux/arm64"),
        ("linux/arm64/9", "linux/arm64/v9"),
        ("linux/arm", "linux/arm/v7"),
        ("linux/arm/7", "linux/arm/v7"),
        ("linux/arm/v6", "linux/arm/v6"),
        ("linux/armhf", "linux/arm/v7"),
        ("linux/armel", "linux/arm/v6"),
        ("linux/i386", "linux/386"),
        ("Linux/AMD64", "linux/amd64"),
        ("windows/amd64", "windows/amd64"),
        ("linux/s390x", "linux/s390x"),
    ],
)
def test_platforms_normalise_like_containerd(text: str, canonical: str) -> None:
    assert str(Platform.parse(text)) == canonical


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "linux/amd64/v8/x", "linux/amd 64", "a/" + "b" * 65])
def test_invalid_platforms_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="invalid platform"):
        Platform.parse(text)


def test_first_matching_entry_in_index_order_wins() -> None:
    first, second = Digest.of(b"1"), Digest.of(b"2")
    platforms = {"linux/arm64/v8": first, "linux/arm64": second}
    assert select_platform(platforms, Platform.parse("linux/arm64")) == ("linux/arm64/v8", first)


def _corpus_indexes() -> list[tuple[str, bytes, MediaType]]:
    if not CORPUS.is_dir():  # the shared corpus sits beside the project; without it there is nothing to read
        return []
    with (CORPUS / "MANIFEST.tsv").open(newline="") as table:
        rows = list(csv.DictReader(table, delimiter="\t"))
    return [
        (row["name"], (CORPUS / row["file"]).read_bytes(), MediaType(row["content_type"]))
        for row in rows
        if row["content_type"] in (MediaType.OCI_INDEX.value, MediaType.DOCKER_LIST.value)
    ]


INDEXES = _corpus_indexes()


def test_the_corpus_is_there() -> None:
    assert len(INDEXES) >= 15, f"expected the real-manifests corpus at {CORPUS}"


@pytest.mark.parametrize(("name", "body", "media_type"), INDEXES, ids=[name for name, _, _ in INDEXES])
def test_every_platform_of_every_real_index_is_selectable_by_its_canonical_name(
    name: str, body: bytes, media_type: MediaType
) -> None:
    manifest = parse_manifest(body, media_type, Digest.of(body))
    assert manifest.platforms is not None
    for key, child in manifest.platforms.items():
        wanted = Platform.parse(key)
        entry, digest = select_platform(manifest.platforms, wanted) or ("", None)
        # The canonical spelling finds an entry of the same platform (the first one, as a pull would).
        assert Platform.parse(entry) == wanted
        assert digest is not None
        if list(manifest.platforms).index(entry) == list(manifest.platforms).index(key):
            assert digest == child


def test_docker_hub_style_list_answers_linux_arm64_with_its_v8_child() -> None:
    [(_, body, media_type)] = [entry for entry in INDEXES if entry[0] == "ci-schema2list"]
    manifest = parse_manifest(body, media_type, Digest.of(body))
    assert manifest.platforms is not None
    assert "linux/arm64" not in manifest.platforms  # spelled arm64 + v8 in the list
    selected = select_platform(manifest.platforms, Platform.parse("linux/arm64"))
    assert selected is not None
    assert selected[0] == "linux/arm64/v8"
    assert selected[1] == manifest.platforms["linux/arm64/v8"]
