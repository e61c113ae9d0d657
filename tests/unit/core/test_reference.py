"""Image reference parsing and normalisation: Docker's rules, stricter digests, clear errors."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from audit.errors import InvalidDigestError, InvalidReferenceError
from audit.models import Digest, ImageRef

HEX64 = "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("nginx", "registry-1.docker.io", "library/nginx", "latest", None),
        ("nginx:1.27", "registry-1.docker.io", "library/nginx", "1.27", None),
        ("docker.io/nginx", "registry-1.docker.io", "library/nginx", "latest", None),
        ("index.docker.io/library/nginx:1", "registry-1.docker.io", "library/nginx", "1", None),
        ("openzaak/open-zaak:1.3.4", "registry-1.docker.io", "openzaak/open-zaak", "1.3.4", None),
        ("ghcr.io/org/app:v1", "ghcr.io", "org/app", "v1", None),
        ("localhost/app", "localhost", "app", "latest", None),
        ("localhost:5000/team/app:1", "localhost:5000", "team/app", "1", None),
        ("127.0.0.1:5000/a/b/c:x_y", "127.0.0.1:5000", "a/b/c", "x_y", None),
        (f"nginx@sha256:{HEX64}", "registry-1.docker.io", "library/nginx", None, f"sha256:{HEX64}"),
        (f"ghcr.io/o/a:1.0@sha256:{HEX64}", "ghcr.io", "o/a", "1.0", f"sha256:{HEX64}"),
        ("registry.example.com:443/a__b/c-d.e:TAG", "registry.example.com:443", "a__b/c-d.e", "TAG", None),
        ("Registry.Example.com/app", "registry.example.com", "app", "latest", None),
    ],
)
def test_parse_normalises(text: str, registry: str, repository: str, tag: str | None, digest: str | None) -> None:
    ref = ImageRef.parse(text)
    assert (ref.registry, ref.repository, ref.tag) == (registry, repository, tag)
    assert (str(ref.digest) if ref.digest else None) == digest


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("Nginx", "lowercase"),
        ("ghcr.io/Org/app", "lowercase"),
        ("nginx:-bad", "invalid tag"),
        ("nginx:" + "a" * 129, "invalid tag"),
        ("nginx@sha256:abc", "64 lowercase hex"),
        (f"nginx@sha256:{'A' * 64}", "64 lowercase hex"),
        (f"nginx@md5:{HEX64}", "unsupported algorithm"),
        ("https://ghcr.io/org/app", "scheme"),
        ("ghcr.io/", "empty"),
        ("a//b", "invalid repository"),
        ("a b", "white space"),
        ("x/" + "a" * 300, "longer than 255"),
    ],
)
def test_invalid_references_name_themselves(text: str, fragment: str) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        ImageRef.parse(text)
    assert fragment in info.value.message
    assert info.value.hint
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("Bad/Ref", "use 'bad/ref'"),
        ("ghcr.io/Org/app:1.0", "use 'ghcr.io/org/app:1.0'"),
        ("Nginx:1.27", "use 'nginx:1.27'"),
    ],
)
def test_uppercase_names_suggest_the_lowercase_reference(text: str, hint: str) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        ImageRef.parse(text)
    assert info.value.hint == hint


def test_familiar_form_is_what_people_type() -> None:
    assert ImageRef.parse("docker.io/library/nginx:1").familiar == "nginx:1"
    assert ImageRef.parse("openzaak/open-zaak:1.3.4").familiar == "openzaak/open-zaak:1.3.4"
    assert ImageRef.parse("ghcr.io/o/a:1").familiar == "ghcr.io/o/a:1"


def test_digest_round_trips_and_hashes() -> None:
    digest = Digest.of(b"hello")
    assert str(digest) == "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    as_field = TypeAdapter(Digest)
    assert as_field.validate_python(str(digest)) == digest
    assert type(as_field.validate_python(str(digest))) is Digest
    assert as_field.dump_python(digest, mode="json") == str(digest)
    assert type(as_field.dump_python(digest)) is str
    assert digest.matches(b"hello") and not digest.matches(b"hello!")
    assert Digest.of(b"x", "sha512").algorithm == "sha512"
    with pytest.raises(InvalidDigestError):
        Digest.parse("sha256:" + "g" * 64)


_component = st.from_regex(r"[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,6}){0,2}", fullmatch=True)
_path = st.lists(_component, min_size=1, max_size=3).map("/".join)
_host = st.sampled_from(["ghcr.io", "registry.example.com:5000", "localhost:5000", "127.0.0.1:443", "quay.io"])
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,20}", fullmatch=True)
_hex = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)


@given(host=_host, path=_path, tag=st.one_of(st.none(), _tag), hex_part=st.one_of(st.none(), _hex))
def test_canonical_string_round_trips(host: str, path: str, tag: str | None, hex_part: str | None) -> None:
    text = f"{host}/{path}" + (f":{tag}" if tag else "") + (f"@sha256:{hex_part}" if hex_part else "")
    ref = ImageRef.parse(text)
    assert ImageRef.parse(str(ref)) == ref
    assert ImageRef.parse(ref.familiar) == ref
    assert ref.registry == host
    assert ref.repository == path
    assert ref.tag == (tag or (None if hex_part else "latest"))


@given(path=_path, tag=_tag)
def test_docker_hub_names_normalise(path: str, tag: str) -> None:
    assume(not ("/" in path and "." in path.split("/", maxsplit=1)[0]))  # a first component with a dot is a host
    ref = ImageRef.parse(f"{path}:{tag}")
    assert ref.registry == "registry-1.docker.io"
    assert ref.repository == (path if "/" in path else f"library/{path}")
    assert ImageRef.parse(f"docker.io/{path}:{tag}") == ref
