"""Pure parsing and normalisation of image references; the only place that knows Docker Hub's defaults."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from audit.errors import InvalidDigestError, InvalidReferenceError

DOCKER_HUB_API_HOST = "registry-1.docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_HOST_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$"
)
_DIGEST_LENGTHS = {"sha256": 64, "sha512": 128}
_HEX_RE = re.compile(r"^[0-9a-f]+$")
MAX_NAME_LENGTH = 255
MAX_TAG_LENGTH = 128
#: Keys of names outside the grammar (and of per-repository pseudo entries) start with this character, which no
#: valid tag can start with, so they never collide with a real tag and never pass `is_valid_tag`.
PSEUDO_TAG_PREFIX = "#"
_PSEUDO_TAG_RE = re.compile(r"#[a-z0-9-]{1,127}")
#: Package files (audit.packages) are stored beside images with `registry = "pypi:<index URL>"`.
PACKAGE_REGISTRY_PREFIX = "pypi:"
DEFAULT_PACKAGE_INDEX = "https://pypi.org/simple"


@dataclass(frozen=True, slots=True)
class ParsedReference:
    registry: str
    repository: str
    tag: str | None
    digest: tuple[str, str] | None


def parse_digest(text: str) -> tuple[str, str]:
    """Split and validate `algorithm:hex`; stricter than Docker (exact lengths, lowercase)."""
    algorithm, sep, hex_part = text.partition(":")
    if not sep:
        raise InvalidDigestError(f"invalid digest {text!r}: missing the algorithm prefix (sha256:)")
    expected = _DIGEST_LENGTHS.get(algorithm)
    if expected is None:
        raise InvalidDigestError(f"invalid digest {text!r}: unsupported algorithm {algorithm!r} (sha256, sha512)")
    if len(hex_part) != expected or not _HEX_RE.match(hex_part):
        raise InvalidDigestError(
            f"invalid digest {text!r}: {algorithm} needs exactly {expected} lowercase hex characters"
        )
    return algorithm, hex_part


def is_valid_tag(tag: str) -> bool:
    """Whether `tag` follows the grammar `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}` (so it is URL- and shell-safe)."""
    return _TAG_RE.fullmatch(tag) is not None


def is_valid_repository(repository: str) -> bool:
    """Whether `repository` is a normalised path of lowercase components (`org/app`), within MAX_NAME_LENGTH."""
    return len(repository) <= MAX_NAME_LENGTH and _PATH_RE.fullmatch(repository) is not None


_PACKAGE_INDEX_RE = re.compile(
    r"^https?://(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~+-]+)*$"
)
_PACKAGE_PROJECT_RE = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){0,199}$")  # PEP 503 normalised


def is_package_spec(text: str) -> bool:
    """Whether a reference as a person types it names a Python package (`pypi:PROJECT==VERSION`), not an image."""
    return text.startswith(PACKAGE_REGISTRY_PREFIX)


def is_valid_package_image(registry: str, repository: str) -> bool:
    """Whether `pypi:<index URL>` / project is a stored package key (audit.packages writes them normalised)."""
    index = registry.removeprefix(PACKAGE_REGISTRY_PREFIX)
    return (
        registry.startswith(PACKAGE_REGISTRY_PREFIX)
        and len(index) <= MAX_NAME_LENGTH
        and _PACKAGE_INDEX_RE.match(index) is not None
        and _PACKAGE_PROJECT_RE.match(repository) is not None
    )


def is_valid_image(registry: str, repository: str) -> bool:
    """Whether `registry/repository` is a stored image name exactly as `parse_reference` normalises it (or a
    package project key, `pypi:<index URL>` and a normalised project name)."""
    if registry.startswith(PACKAGE_REGISTRY_PREFIX):
        return is_valid_package_image(registry, repository)
    try:
        parsed = parse_reference(f"{registry}/{repository}")
    except InvalidReferenceError:
        return False
    return (parsed.registry, parsed.repository, parsed.tag) == (registry, repository, DEFAULT_TAG)


def tag_key(tag: str) -> str:
    """A bounded, grammar-disjoint key for a tag: the tag itself when valid, a key made here as is, else a hash.

    Used wherever a tag becomes a key (state table, state file): a name a registry made up can be 70,000
    characters of anything, and must neither break a key limit nor be mistaken for a real tag. Idempotent.
    """
    if is_valid_tag(tag) or _PSEUDO_TAG_RE.fullmatch(tag):
        return tag
    return rejected_tag_key(tag)


def rejected_tag_key(name: str) -> str:
    """The key of a name a registry listed outside the grammar: always a hash, so that a listed name that merely
    looks like one of our keys (`#tag-list-cap`) cannot take that key over."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{PSEUDO_TAG_PREFIX}invalid-tag-{digest[:32]}"


def _looks_like_host(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost" or component != component.lower()


def normalise_registry(host: str) -> str:
    """Docker Hub's many names fold into the host actually contacted."""
    return DOCKER_HUB_API_HOST if host.lower() in DOCKER_HUB_ALIASES else host.lower()


def parse_image_name(host: str, repository: str) -> tuple[str, str]:
    """Validate and normalise a registry host and a repository path given separately (as events name them).

    Returns `(registry, repository)` the way the trust table stores them: Docker Hub's aliases folded, its
    official images under `library/`. Raises InvalidReferenceError for anything outside the grammar.
    """
    if not _HOST_RE.fullmatch(host):
        raise InvalidReferenceError(f"invalid registry host {host!r}")
    if not _PATH_RE.fullmatch(repository):
        raise InvalidReferenceError(
            f"invalid repository name {repository!r}",
            hint="path components are lowercase letters and digits separated by '.', '_', '__', '-' or '/'",
        )
    registry = normalise_registry(host)
    if registry == DOCKER_HUB_API_HOST and "/" not in repository:
        repository = f"library/{repository}"
    if len(f"{registry}/{repository}") > MAX_NAME_LENGTH:
        raise InvalidReferenceError(f"invalid image name {registry}/{repository}: longer than {MAX_NAME_LENGTH}")
    return registry, repository


def parse_reference(text: str) -> ParsedReference:
    """Parse `[host[:port]/]path[:tag][@alg:hex]` the way Docker does, with clear errors."""
    original = text
    text = text.strip()
    if not text:
        raise InvalidReferenceError("invalid image reference '': it is empty")
    if len(text.split(maxsplit=1)) > 1:  # white space inside (str.split splits where str.isspace says)
        raise InvalidReferenceError(f"invalid image reference {original!r}: it contains white space")
    if "://" in text:
        raise InvalidReferenceError(
            f"invalid image reference {original!r}: drop the URL scheme",
            hint="write registry.example.com/team/app:1.0, not https://registry.example.com/...",
        )

    digest: tuple[str, str] | None = None
    name_part = text
    if "@" in text:
        name_part, _, digest_text = text.partition("@")
        try:
            digest = parse_digest(digest_text)
        except InvalidDigestError as exc:
            raise InvalidReferenceError(f"invalid image reference {original!r}: {exc.message}", hint=exc.hint) from None

    tag: str | None = None
    last_slash = name_part.rfind("/")
    colon = name_part.rfind(":")
    if colon > last_slash:
        name_part, tag = name_part[:colon], name_part[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise InvalidReferenceError(
                f"invalid image reference {original!r}: invalid tag {tag!r}",
                hint="a tag is 1-128 characters of letters, digits, '_', '.' and '-', not starting with '.' or '-'",
            )

    first, sep, rest = name_part.partition("/")
    if sep and first != first.lower() and not _looks_like_host(first.lower()):
        # Docker would take an uppercase first component for a host; far more likely it is a mistyped name.
        raise InvalidReferenceError(
            f"invalid image reference {original!r}: repository names must be lowercase",
            hint=f"use {name_part.lower()!r}",
        )
    if sep and _looks_like_host(first):
        if not _HOST_RE.match(first):
            raise InvalidReferenceError(f"invalid image reference {original!r}: invalid registry host {first!r}")
        registry = normalise_registry(first)
        path = rest
    else:
        registry = DOCKER_HUB_API_HOST
        path = name_part

    if not path:
        raise InvalidReferenceError(f"invalid image reference {original!r}: the repository name is empty")
    if path != path.lower() and _PATH_RE.match(path.lower()):
        raise InvalidReferenceError(
            f"invalid image reference {original!r}: repository names must be lowercase",
            hint=f"use {text.replace(path, path.lower(), 1)!r}",
        )
    if not _PATH_RE.match(path):
        raise InvalidReferenceError(
            f"invalid image reference {original!r}: invalid repository name {path!r}",
            hint="path components are lowercase letters and digits separated by '.', '_', '__', '-' or '/'",
        )
    if registry == DOCKER_HUB_API_HOST and "/" not in path:
        path = f"library/{path}"
    if len(f"{registry}/{path}") > MAX_NAME_LENGTH:
        raise InvalidReferenceError(
            f"invalid image reference {original!r}: the name is longer than {MAX_NAME_LENGTH} characters"
        )
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return ParsedReference(registry=registry, repository=path, tag=tag, digest=digest)


def is_valid_host(text: str) -> bool:
    """`host[:port]` as a registry or an index names it (DNS name, IPv4, or a bracketed IPv6 literal)."""
    return _HOST_RE.match(text) is not None


def familiar_name(registry: str, repository: str) -> str:
    """The short name people type: `nginx`, `openzaak/open-zaak`, `ghcr.io/org/app`, `pypi:requests`."""
    if registry.startswith(PACKAGE_REGISTRY_PREFIX):
        index = registry.removeprefix(PACKAGE_REGISTRY_PREFIX)
        where = "" if index == DEFAULT_PACKAGE_INDEX else f"{index}/"
        return f"{PACKAGE_REGISTRY_PREFIX}{where}{repository}"
    if registry == DOCKER_HUB_API_HOST:
        return repository.removeprefix("library/")
    return f"{registry}/{repository}"
