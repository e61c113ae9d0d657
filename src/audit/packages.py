"""Pure grammar of Python package releases: `pypi:` specs, index URLs, project names and distribution filenames.

A package file is audited as a tracked artifact beside image tags, under the same trust and state keys: its
"registry" is `pypi:<index URL>`, its "repository" the normalised project name (PEP 503) and its "tag" the
filename. Nothing an index says becomes such a key before it passed `parse_filename` here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from audit.errors import UsageError
from audit.models import Digest
from audit.reference import DEFAULT_PACKAGE_INDEX, PACKAGE_REGISTRY_PREFIX, familiar_name, is_valid_host

PACKAGE_PREFIX: Final = PACKAGE_REGISTRY_PREFIX
DEFAULT_INDEX_URL: Final = DEFAULT_PACKAGE_INDEX
MAX_FILENAME_CHARS: Final = 255

# PEP 508 names (before normalisation); PEP 503 normalisation folds runs of -_. into one '-'.
_PROJECT_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,198}[A-Za-z0-9])?$")
_NORMALISE_RE = re.compile(r"[-_.]+")
# PEP 440 public and local versions, lenient about case and separators (they are normalised by comparison).
_VERSION_RE = re.compile(r"^(?:[0-9]+!)?[0-9]+(?:[._-]?[A-Za-z0-9]+)*(?:\+[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*)?$")
# Wheel components (PEP 427 with the binary distribution format's escaping): no '-' inside a component.
_WHEEL_PART_RE = re.compile(r"^[A-Za-z0-9_.+!]+$")
_SDIST_SUFFIXES: Final = (".tar.gz", ".zip", ".tar.bz2", ".tar.xz", ".tgz")
_INDEX_PATH_RE = re.compile(r"^[A-Za-z0-9._~+/-]*$")


def normalise_project(name: str) -> str:
    """PEP 503: lowercase, runs of `-`, `_` and `.` become one `-`."""
    return _NORMALISE_RE.sub("-", name).lower()


def normalise_version(version: str) -> str:
    """A comparison key for versions as filenames spell them (`1.0_rc1` and `1.0-RC1` are one release)."""
    return _NORMALISE_RE.sub(".", version).lower()


def parse_project(text: str, *, where: str = "") -> str:
    if not _PROJECT_RE.match(text):
        raise UsageError(
            f"{where}invalid project name {text!r}",
            hint="a project name is letters, digits, '.', '_' and '-', starting and ending with a letter or digit",
        )
    return normalise_project(text)


@dataclass(frozen=True, slots=True)
class PackageSpec:
    """`pypi:PROJECT` or `pypi:PROJECT==VERSION` as typed on the command line."""

    project: str  # normalised
    version: str | None

    @classmethod
    def parse(cls, text: str, *, require_version: bool) -> PackageSpec:
        hint = "write pypi:PROJECT==VERSION, e.g. pypi:requests==2.32.3"
        if not text.startswith(PACKAGE_PREFIX):
            raise UsageError(f"invalid package {text!r}: it must start with {PACKAGE_PREFIX}", hint=hint)
        body = text.removeprefix(PACKAGE_PREFIX)
        name, sep, version = body.partition("==")
        project = parse_project(name.strip(), where=f"invalid package {text!r}: ")
        if sep:
            version = version.strip()
            if not _VERSION_RE.match(version):
                raise UsageError(f"invalid package {text!r}: invalid version {version!r}", hint=hint)
        elif require_version:
            raise UsageError(f"invalid package {text!r}: it needs ==VERSION", hint=hint)
        elif any(ch in body for ch in "<>=!~@ "):
            raise UsageError(f"invalid package {text!r}: only PROJECT or PROJECT==VERSION", hint=hint)
        return cls(project=project, version=version if sep else None)


# --------------------------------------------------------------------------------------------------- filenames


@dataclass(frozen=True, slots=True)
class DistFilename:
    """A validated wheel or sdist filename and what it says about its release."""

    filename: str
    project: str  # normalised
    version: str  # as spelled in the filename
    kind: str  # "wheel" or "sdist"

    @property
    def release(self) -> str:
        return normalise_version(self.version)


def parse_filename(filename: str) -> DistFilename | None:
    """The wheel or sdist filename grammar; None for anything else (a URL path, `..`, odd characters)."""
    if not 0 < len(filename) <= MAX_FILENAME_CHARS or filename.startswith((".", "-")):
        return None
    if not re.fullmatch(r"[A-Za-z0-9._+!-]+", filename):
        return None
    if filename.endswith(".whl"):
        parts = filename.removesuffix(".whl").split("-")
        if len(parts) not in (5, 6) or not all(_WHEEL_PART_RE.match(part) for part in parts):
            return None
        name, version = parts[0], parts[1]
        if len(parts) == 6 and not parts[2][:1].isdigit():  # the optional build tag starts with a digit
            return None
        kind = "wheel"
    else:
        suffix = next((s for s in _SDIST_SUFFIXES if filename.endswith(s)), None)
        if suffix is None:
            return None
        name, sep, version = filename.removesuffix(suffix).rpartition("-")
        if not sep:
            return None
        kind = "sdist"
    if not _PROJECT_RE.match(name) or not _VERSION_RE.match(version):
        return None
    return DistFilename(filename=filename, project=normalise_project(name), version=version, kind=kind)


# --------------------------------------------------------------------------------------------------- index URLs


def parse_index_url(text: str, *, insecure_hosts: frozenset[str] = frozenset(), flag: str = "--index-url") -> str:
    """A simple-API base URL, normalised (no trailing slash); plain http only for hosts listed as insecure."""
    hint = "e.g. https://pypi.org/simple or https://pypi.example.com/simple (credentials go in netrc or the secret)"
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"invalid {flag} {text!r}: it needs an http(s) scheme and a host", hint=hint)
    if "@" in parts.netloc:
        raise UsageError(f"invalid {flag}: do not put credentials in the URL", hint=hint)
    if parts.query or parts.fragment or not _INDEX_PATH_RE.match(parts.path) or "/../" in f"{parts.path}/":
        raise UsageError(f"invalid {flag} {text!r}: only scheme, host, port and a plain path", hint=hint)
    host = parts.netloc.lower()
    if not is_valid_host(host):
        raise UsageError(f"invalid {flag} {text!r}: invalid host {parts.netloc!r}", hint=hint)
    if parts.scheme == "http" and not is_insecure(host, insecure_hosts):
        raise UsageError(
            f"{flag} {text!r} is plain http",
            hint=f"use https, or list {host} with --insecure-registry / DIGEST_AUDIT_INSECURE_REGISTRIES",
        )
    return f"{parts.scheme}://{host}{parts.path.rstrip('/')}"


def is_insecure(host: str, insecure_hosts: frozenset[str]) -> bool:
    """`host` (host[:port]) is listed exactly, or its bare host is listed (every port)."""
    bare = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return host in insecure_hosts or bare in insecure_hosts


def index_host(index_url: str) -> str:
    return urlsplit(index_url).netloc


# --------------------------------------------------------------------------------------------------- keys


def registry_key(index_url: str) -> str:
    """The `registry` of a package file's trust and state items."""
    return f"{PACKAGE_PREFIX}{index_url}"


def is_package_registry(registry: str) -> bool:
    return registry.startswith(PACKAGE_PREFIX)


def index_of(registry: str) -> str:
    return registry.removeprefix(PACKAGE_PREFIX)


def display_name(registry: str, project: str) -> str:
    """`pypi:requests` on PyPI, `pypi:https://pypi.example.com/simple/requests` elsewhere."""
    return familiar_name(registry, project)


# --------------------------------------------------------------------------------------------------- index pages


@dataclass(frozen=True, slots=True)
class IndexFile:
    """One file a simple page lists, its name already validated; everything else is still the index's word."""

    name: DistFilename
    url: str
    sha256: Digest | None  # from `hashes` (PEP 691) or the `#sha256=` fragment (PEP 503); None when absent
    yanked: str | None = None  # PEP 592: the reason ("" when none given); None when not yanked
    upload_time: str | None = None  # PEP 700
    size: int | None = None  # PEP 700

    @property
    def filename(self) -> str:
        return self.name.filename


@dataclass(frozen=True, slots=True)
class ProjectPage:
    """What an index serves for one project now, bounded: `truncated` when it listed more than was read."""

    project: str
    files: tuple[IndexFile, ...]
    invalid: tuple[str, ...] = ()  # names that fit no wheel/sdist grammar (printable, bounded)
    versions: tuple[str, ...] | None = None  # PEP 700
    api: str = "json"  # "json" (PEP 691) or "html" (PEP 503)
    truncated: bool = False


def _any_scheme_index(text: str, *, what: str) -> str:
    """An index URL as stored in a key: validated, plain http allowed (no request is made from a key)."""
    host = urlsplit(text).netloc.lower()
    return parse_index_url(text, insecure_hosts=frozenset({host}), flag=what)


def package_key(registry: str, repository: str, tag: str) -> tuple[str, str, str]:
    """Validate a stored package file key (trust import, hand-edited files); raises UsageError naming the part."""
    index = _any_scheme_index(index_of(registry), what="registry")
    if registry_key(index) != registry:
        raise UsageError(f"package registry {registry!r} is not normalised", hint=f"write {registry_key(index)!r}")
    project = parse_project(repository, where="repository: ")
    name = parse_filename(tag)
    if name is None or name.project != project:
        raise UsageError(f"tag {tag!r} is no wheel or sdist filename of {project}")
    return registry, project, tag


def package_image_name(text: str) -> str:
    """`pypi:PROJECT` (PyPI) or `pypi:INDEX_URL/PROJECT` as a person types it, to the key's `image`."""
    body = text.removeprefix(PACKAGE_PREFIX)
    if "://" in body:
        index_text, _, project = body.rstrip("/").rpartition("/")
        index = _any_scheme_index(index_text, what="index URL")
    else:
        index, project = DEFAULT_INDEX_URL, body
    return f"{registry_key(index)}/{parse_project(project, where=f'{text!r}: ')}"
