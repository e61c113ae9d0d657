"""Reading what a registry sent: manifests and their platforms, error codes, Link and rate-limit headers."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from audit.adapters.registry.failures import FailureKind, RegistryFailure
from audit.errors import InvalidDigestError
from audit.models import SCHEMA1_MEDIA_TYPES, Digest, MediaType

# The reference registry's limit; the spec says clients should expect at least 4 MB.
MAX_MANIFEST_BYTES: Final = 4 * 1024 * 1024
ACCEPTED_MEDIA_TYPES: Final = frozenset(m.value for m in MediaType)
SCHEMA1_REASON: Final = (
    "serves a Docker schema 1 manifest, which cannot be verified: re-push the tag as schema 2 or OCI"
)
# BuildKit marks attestation manifests in an index with this annotation (and an unknown/unknown platform).
ATTESTATION_ANNOTATION: Final = "vnd.docker.reference.type"


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest as served: digest (hash of exactly these bytes), media type, body, platform children."""

    digest: Digest
    media_type: MediaType
    body: bytes = field(repr=False)
    platforms: dict[str, Digest] | None = None  # only for an index / manifest list


def media_type_of(content_type: str | None) -> str | None:
    """`Content-Type` without parameters, lowercased; None when absent or empty."""
    if not content_type:
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    return media or None


def check_media_type(media: str | None) -> MediaType | None:
    """A served media type must be one we asked for (schema1, HTML login pages and the like are not)."""
    if media is None:
        return None
    if media in SCHEMA1_MEDIA_TYPES:
        raise RegistryFailure(SCHEMA1_REASON, FailureKind.SCHEMA1)
    if media not in ACCEPTED_MEDIA_TYPES:
        raise RegistryFailure(f"unexpected content type {media}", FailureKind.BAD_RESPONSE)
    return MediaType(media)


def parse_digest_header(value: str | None, known: Digest | None = None) -> Digest | None:
    """The digest a `Docker-Content-Digest` header names; `known` itself when the header spells exactly it.

    A routine check's header repeats the trusted digest: reusing that validated object skips a parse and a
    model per tag, and a match keeps one shared object instead of a copy.
    """
    if value is None or not value.strip():
        return None
    if known is not None and value == f"{known.algorithm}:{known.hex}":
        return known
    try:
        return Digest.parse(value)
    except InvalidDigestError:
        raise RegistryFailure("malformed digest header", FailureKind.BAD_RESPONSE) from None


def _infer_media_type(document: Mapping[str, object]) -> MediaType:
    # Neither header nor body says what this is; the shape does (both OCI types may omit mediaType).
    if document.get("schemaVersion") == 2:
        if isinstance(document.get("manifests"), list):
            return MediaType.OCI_INDEX
        if isinstance(document.get("config"), dict):
            return MediaType.OCI_MANIFEST
    raise RegistryFailure("malformed manifest", FailureKind.BAD_RESPONSE)


def parse_manifest(body: bytes, content_type: MediaType | None, digest: Digest) -> Manifest:
    """Check a manifest body against its Content-Type and read its platform children if it is an index."""
    try:
        document = json.loads(body)
    except ValueError:
        raise RegistryFailure("malformed manifest", FailureKind.BAD_RESPONSE) from None
    if not isinstance(document, dict):
        raise RegistryFailure("malformed manifest", FailureKind.BAD_RESPONSE)
    declared = document.get("mediaType")
    media_type = content_type
    if declared is not None:
        if not isinstance(declared, str):
            raise RegistryFailure("malformed manifest", FailureKind.BAD_RESPONSE)
        if content_type is None:
            media_type = check_media_type(declared.strip().lower())
        elif declared.strip().lower() != content_type.value:
            raise RegistryFailure("manifest media type disagrees with content type", FailureKind.BAD_RESPONSE)
    if media_type is None:
        media_type = _infer_media_type(document)
    platforms = parse_platforms(document) if media_type.is_index else None
    return Manifest(digest=digest, media_type=media_type, body=body, platforms=platforms)


def parse_platforms(document: Mapping[str, object]) -> dict[str, Digest]:
    """`{"os/arch[/variant]": child digest}` of an index.

    Attestation manifests (platform unknown/unknown, or BuildKit's attestation annotation) and entries without
    a platform are skipped: they are not images anyone runs. If two children share a key (Windows images that
    differ in os.version), the first wins, as a pull would pick it first.
    """
    children = document.get("manifests")
    if not isinstance(children, list):
        raise RegistryFailure("malformed manifest", FailureKind.BAD_RESPONSE)
    platforms: dict[str, Digest] = {}
    for child in children:
        if not isinstance(child, dict):
            raise RegistryFailure("malformed manifest", FailureKind.BAD_RESPONSE)
        annotations = child.get("annotations")
        if isinstance(annotations, dict) and annotations.get(ATTESTATION_ANNOTATION) == "attestation-manifest":
            continue
        platform = child.get("platform")
        if not isinstance(platform, dict):
            continue
        os_name, arch, variant = platform.get("os"), platform.get("architecture"), platform.get("variant")
        if not isinstance(os_name, str) or not isinstance(arch, str) or not os_name or not arch:
            raise RegistryFailure("malformed manifest", FailureKind.BAD_RESPONSE)
        if os_name == "unknown" and arch == "unknown":
            continue
        key = f"{os_name}/{arch}/{variant}" if isinstance(variant, str) and variant else f"{os_name}/{arch}"
        digest_text = child.get("digest")
        if not isinstance(digest_text, str):
            raise RegistryFailure("malformed manifest", FailureKind.BAD_RESPONSE)
        try:
            digest = Digest.parse(digest_text)
        except InvalidDigestError:
            raise RegistryFailure("malformed manifest", FailureKind.BAD_RESPONSE) from None
        platforms.setdefault(key, digest)
    return platforms


def error_codes(body: bytes) -> list[str]:
    """The `code`s of a distribution error body `{"errors": [{"code": ...}]}`; empty if it is not one."""
    try:
        document = json.loads(body)
    except ValueError:
        return []
    errors = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(errors, list):
        return []
    return [str(e["code"]).upper() for e in errors if isinstance(e, dict) and isinstance(e.get("code"), str)]


_LINK_RE = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,]*)*)")
_REL_RE = re.compile(r';\s*rel\s*=\s*(?:"([^"]*)"|([^\s;,]+))', re.IGNORECASE)


def next_link(values: list[str]) -> str | None:
    """The target of `Link: <…>; rel="next"` (RFC 8288), as written (maybe relative)."""
    for value in values:
        for match in _LINK_RE.finditer(value):
            for rel in _REL_RE.finditer(match.group(2)):
                if "next" in (rel.group(1) or rel.group(2) or "").lower().split():
                    return match.group(1).strip()
    return None


def parse_rate_limit_remaining(value: str | None) -> int | None:
    """`ratelimit-remaining: 20;w=21600` -> 20."""
    if value is None:
        return None
    head = value.split(";", 1)[0].strip()
    return int(head) if head.isdigit() else None
