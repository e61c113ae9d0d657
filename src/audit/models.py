"""The domain's value types, without pydantic: references, digests, observations, verdicts, listings.

`check` needs only these, and importing pydantic costs about 0.1 s of every process (issue 11): the records
that are stored, imported and exported (trust records, watch settings, tag states, findings, CI runs) are
pydantic models in `audit.records`. `ImageRef` and `Observation` are frozen slotted dataclasses that check
their fields' types and coerce digest, status and media type text as the models did.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Self, overload

from audit.errors import InvalidDigestError
from audit.reference import (
    PACKAGE_REGISTRY_PREFIX,
    familiar_name,
    parse_digest,
    parse_reference,
)

if TYPE_CHECKING:
    from pydantic import GetCoreSchemaHandler
    from pydantic_core import CoreSchema


class MediaType(StrEnum):
    DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
    DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
    OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    OCI_INDEX = "application/vnd.oci.image.index.v1+json"

    @property
    def is_index(self) -> bool:
        return self in (MediaType.DOCKER_LIST, MediaType.OCI_INDEX)


MANIFEST_ACCEPT = ", ".join(m.value for m in MediaType)
#: Docker schema 1 (removed from Docker 26): its signed form has no content digest a client can recompute, so a
#: tag that still serves it can never be verified, only re-pushed. Never asked for; recognised to say so.
SCHEMA1_MEDIA_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)


class Digest(str):
    """A content digest `algorithm:hex`, validated strictly: a `str` of its canonical form, and so its own
    serialised form. A run holds several per tag (trusted, live, per platform, remembered): as a model each
    cost about 600 bytes more than its text (issue 11, 10,000 tags)."""

    __slots__ = ()

    def __new__(cls, text: str | None = None, *, algorithm: str | None = None, hex: str | None = None) -> Self:
        if text is None:
            if algorithm is None or hex is None:
                raise InvalidDigestError("a digest needs its algorithm and its hex part")
            text = f"{algorithm}:{hex}"
        parse_digest(text)
        return super().__new__(cls, text)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: object, handler: GetCoreSchemaHandler) -> CoreSchema:
        from pydantic_core import core_schema  # noqa: PLC0415 - only models (audit.records) ever ask

        return core_schema.no_info_plain_validator_function(
            cls.of_value,
            serialization=core_schema.plain_serializer_function_ser_schema(str, return_schema=core_schema.str_schema()),
        )

    @classmethod
    def of_value(cls, value: object) -> Digest:
        """A field's value: a Digest, its text, or `{"algorithm", "hex"}` (the form of the former model)."""
        if isinstance(value, Digest):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict) and set(value) == {"algorithm", "hex"}:
            return cls(algorithm=str(value["algorithm"]), hex=str(value["hex"]))
        raise ValueError("a digest is a string `algorithm:hex`")

    @property
    def algorithm(self) -> str:
        return self.partition(":")[0]

    @property
    def hex(self) -> str:
        return self.partition(":")[2]

    @classmethod
    def parse(cls, text: str) -> Digest:
        algorithm, hex_part = parse_digest(text.strip())
        return cls(algorithm=algorithm, hex=hex_part)

    @classmethod
    def of(cls, content: bytes, algorithm: str = "sha256") -> Digest:
        if algorithm not in ("sha256", "sha512"):
            raise InvalidDigestError(f"unsupported digest algorithm {algorithm!r}")
        return cls(algorithm=algorithm, hex=hashlib.new(algorithm, content).hexdigest())

    def matches(self, content: bytes) -> bool:
        return hashlib.new(self.algorithm, content).hexdigest() == self.hex

    @property
    def short(self) -> str:
        return self[: self.index(":") + 13]

    def __repr__(self) -> str:
        return f"Digest({str.__repr__(self)})"


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A normalised image reference. `tag` is what is queried, `digest` the pin to compare with."""

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.registry, str) and isinstance(self.repository, str)):
            raise TypeError("an image reference's registry and repository are strings")
        if self.tag is not None and not isinstance(self.tag, str):
            raise TypeError("an image reference's tag is a string or None")
        if self.digest is not None and type(self.digest) is not Digest:
            object.__setattr__(self, "digest", Digest.of_value(self.digest))

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        parsed = parse_reference(text)
        digest = Digest(algorithm=parsed.digest[0], hex=parsed.digest[1]) if parsed.digest else None
        return cls(registry=parsed.registry, repository=parsed.repository, tag=parsed.tag, digest=digest)

    @property
    def image(self) -> str:
        """`registry/repository`, the key under which tags are stored."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar(self) -> str:
        """Short human form, e.g. `openzaak/open-zaak:1.3.5`."""
        text = familiar_name(self.registry, self.repository)
        if self.tag and self.registry.startswith(PACKAGE_REGISTRY_PREFIX):
            text += f"/{self.tag}"  # a package file: pypi:PROJECT/FILENAME
        elif self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def manifest_reference(self) -> str:
        """What goes after `/manifests/`: the tag if there is one, else the digest."""
        if self.tag is not None:
            return self.tag
        assert self.digest is not None  # parse() guarantees a tag or a digest
        return str(self.digest)

    def with_tag(self, tag: str) -> ImageRef:
        return ImageRef(registry=self.registry, repository=self.repository, tag=tag)

    def __str__(self) -> str:
        text = self.image
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


class Verdict(StrEnum):
    MATCH = "match"
    DRIFT = "drift"
    MISSING = "missing"
    UNVERIFIABLE = "unverifiable"
    UNTRACKED = "untracked"
    # Only from `check` without a pin: the live digest was established (nothing to compare it with).
    RESOLVED = "resolved"
    # Only from `run`: a tag with an open alert left the audit (its record removed, an untracked tag gone or
    # ignored). Its alert is closed with a `resolved` notice. States saved before this value existed say
    # "resolved" for it (see TagState).
    NO_LONGER_AUDITED = "no-longer-audited"
    # Never the verdict of a check: the status of a yank notice (the index serves a recorded package file
    # yanked, PEP 592), which tells a person something without saying the file changed.
    YANKED = "yanked"


#: The verdicts a run gives an audited tag, in the order summaries and metrics list them.
AUDIT_VERDICTS = (Verdict.MATCH, Verdict.DRIFT, Verdict.MISSING, Verdict.UNVERIFIABLE, Verdict.UNTRACKED)


class LiveStatus(StrEnum):
    """What the registry client established about one reference."""

    FOUND = "found"
    MISSING = "missing"
    UNVERIFIABLE = "unverifiable"


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def iso_utc(moment: datetime) -> str: ...
@overload
def iso_utc(moment: None) -> None: ...
@overload
def iso_utc(moment: datetime | None) -> str | None: ...
def iso_utc(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a `Z` (`2025-01-02T03:04:05Z`), the one form every output prints a time in (alerts,
    `check --json`, `report`, backfill plans); naive times are taken as UTC. Stores keep their own fixed-width
    form (it must sort as text)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def known_media_type(value: object) -> MediaType | None:
    """A media type we do not know reads as unknown (None): the registry client refuses such types, but a stored
    or imported record may carry one, and it must not stop an audit."""
    if value is None or isinstance(value, MediaType):
        return value
    if isinstance(value, str):
        return MediaType(value) if value in MediaType else None
    raise TypeError(f"a media type is a string, not {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class Observation:
    """What a registry served for one reference at one moment, with the evidence behind it."""

    ref: ImageRef
    status: LiveStatus
    live_digest: Digest | None = None
    media_type: MediaType | None = None
    reason: str | None = None
    platforms: dict[str, Digest] | None = None
    rate_limit_remaining: int | None = None
    checked_at: datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        if not isinstance(self.ref, ImageRef):
            raise TypeError("an observation's ref is an ImageRef")
        if type(self.status) is not LiveStatus:
            object.__setattr__(self, "status", LiveStatus(self.status))
        if self.live_digest is not None and type(self.live_digest) is not Digest:
            object.__setattr__(self, "live_digest", Digest.of_value(self.live_digest))
        if self.media_type is not None and type(self.media_type) is not MediaType:
            object.__setattr__(self, "media_type", known_media_type(self.media_type))
        if self.platforms is not None and not all(type(d) is Digest for d in self.platforms.values()):
            object.__setattr__(self, "platforms", _digest_map(self.platforms))
        if self.reason is not None and not isinstance(self.reason, str):
            raise TypeError("an observation's reason is a string or None")
        if not isinstance(self.checked_at, datetime):
            raise TypeError("an observation's checked_at is a datetime")


def _digest_map(platforms: Mapping[str, object]) -> dict[str, Digest]:
    if not isinstance(platforms, Mapping) or not all(isinstance(name, str) for name in platforms):
        raise TypeError("platforms map platform names to digests")
    return {name: Digest.of_value(digest) for name, digest in platforms.items()}


class MovingMode(StrEnum):
    LATEST_RECORDED = "latest-recorded"
    ANY_TRUSTED = "any-trusted"


@dataclass(frozen=True, slots=True)
class RejectedTag:
    """A name a registry listed that is outside the tag grammar: never queried, only reported."""

    key: str  # `reference.tag_key` of the raw name: bounded, never a valid tag
    name: str  # the raw name, cut to a bounded length: data, to be escaped by every output (`printable`)


@dataclass(frozen=True, slots=True)
class TagListing:
    """What one repository's tag list said, read page by page within the bounds the caller set."""

    tags: tuple[str, ...]  # names that follow the grammar, unique, in the registry's order
    rejected: tuple[RejectedTag, ...] = ()  # names outside the grammar (the first few, see `rejected_count`)
    rejected_count: int = 0
    stopped: str | None = None  # why listing ended before the last page ("cap", "time"); None: complete

    @property
    def complete(self) -> bool:
        return self.stopped is None


@dataclass(frozen=True, slots=True)
class RejectedWatch:
    """Stored watch settings that failed validation: reported, never used."""

    image: str  # printable, bounded
    problem: str


class RecordOutcome(StrEnum):
    CREATED = "created"
    UNCHANGED = "unchanged"  # the same digest was already trusted: a no-op
    REPLACED = "replaced"  # a pinned tag got a new digest with --replace; the old one went to history
    APPENDED = "appended"  # a moving tag got a new digest; the old one went to history


class Notice(StrEnum):
    NEW = "new"
    REMINDER = "reminder"
    RESOLVED = "resolved"


class LogStatus(StrEnum):
    READ = "read"
    EXPIRED = "log-expired"  # past retention (GitHub 410/404, GitLab erased trace)
    UNREADABLE = "log-unreadable"  # refused (too big, zip bomb, bad entry names) or the download failed
