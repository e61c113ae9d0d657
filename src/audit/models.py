"""Frozen domain models shared by every layer: references, digests, observations, trust records, findings."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, NamedTuple, Self, overload

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema

from audit.errors import InvalidDigestError
from audit.reference import (
    PACKAGE_REGISTRY_PREFIX,
    familiar_name,
    is_valid_image,
    is_valid_tag,
    parse_digest,
    parse_reference,
)
from audit.untrusted import has_unsafe_characters, printable

#: Models validated with the same fields share one `model_fields_set`: a run holds a few models per tag, and a
#: set of five or more names costs 728 bytes each (issue 11). Frozen models never change theirs in place
#: (`model_copy(update=...)` copies it before adding to it). Bounded: so many distinct sets, then no sharing.
_SHARED_FIELDS_SETS: dict[frozenset[str], set[str]] = {}
MAX_SHARED_FIELDS_SETS = 1024


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def model_post_init(self, context: object, /) -> None:
        given = self.__pydantic_fields_set__
        shared = _SHARED_FIELDS_SETS.get(key := frozenset(given))
        if shared is None:
            if len(_SHARED_FIELDS_SETS) < MAX_SHARED_FIELDS_SETS:
                _SHARED_FIELDS_SETS[key] = given
        elif shared is not given:
            object.__setattr__(self, "__pydantic_fields_set__", shared)


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


def _known_media_type(value: object) -> object:
    """A media type we do not know reads as unknown (None), as it did when it was a string: the registry client
    refuses such types, but a stored or imported record may carry one, and it must not stop an audit."""
    if isinstance(value, str) and value not in MediaType:
        return None
    return value


#: A manifest's media type where it is carried (observations, trust records, findings): one of ours, or unknown.
KnownMediaType = Annotated[MediaType | None, BeforeValidator(_known_media_type)]


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
    def __get_pydantic_core_schema__(cls, source: object, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validated,
            serialization=core_schema.plain_serializer_function_ser_schema(str, return_schema=core_schema.str_schema()),
        )

    @classmethod
    def _validated(cls, value: object) -> Digest:
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


class ImageRef(Frozen):
    """A normalised image reference. `tag` is what is queried, `digest` the pin to compare with."""

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

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


class Observation(Frozen):
    """What a registry served for one reference at one moment, with the evidence behind it."""

    ref: ImageRef
    status: LiveStatus
    live_digest: Digest | None = None
    media_type: KnownMediaType = None
    reason: str | None = None
    platforms: dict[str, Digest] | None = None
    rate_limit_remaining: int | None = None
    checked_at: datetime = Field(default_factory=utcnow)


class MovingMode(StrEnum):
    LATEST_RECORDED = "latest-recorded"
    ANY_TRUSTED = "any-trusted"


class TrustedImage(Frozen):
    """The digest CI recorded for one (image, tag), and where it came from."""

    registry: str
    repository: str
    tag: str
    digest: Digest
    platforms: dict[str, Digest] | None = None
    media_type: KnownMediaType = None
    source: str
    commit: str | None = None
    recorded_at: datetime
    recorded_by: str | None = None
    reason: str | None = None  # why a replace happened, when it did

    @property
    def image(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def ref(self) -> ImageRef:
        return ImageRef(registry=self.registry, repository=self.repository, tag=self.tag)


#: Bounds of one repository's watch settings: they come from files, imports and hand-written table items.
MAX_IGNORE_PATTERNS = 100
MAX_PATTERN_LENGTH = 256
MAX_MOVING_TAGS = 1000


class WatchSettings(Frozen):
    """Per-repository settings: report unrecorded tags, tags to ignore, tags allowed to move.

    Validated wherever they are built (CLI, import, files, table items): the name is a normalised image name,
    moving tags follow the tag grammar, ignore patterns are bounded and free of control characters.
    """

    registry: str
    repository: str
    track_new_tags: bool = False
    ignore: tuple[str, ...] = ()
    moving: dict[str, MovingMode] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _validate(self) -> Self:
        if not is_valid_image(self.registry, self.repository):
            shown = printable(f"{self.registry}/{self.repository}", max_chars=300)
            raise ValueError(
                f"invalid image '{shown}': registry must be a host[:port] and repository a lowercase path, "
                "as `digest-audit watch` stores them (e.g. registry ghcr.io, repository org/app)"
            )
        if len(self.ignore) > MAX_IGNORE_PATTERNS:
            raise ValueError(f"at most {MAX_IGNORE_PATTERNS} ignore patterns, not {len(self.ignore)}")
        for pattern in self.ignore:
            if not pattern or len(pattern) > MAX_PATTERN_LENGTH or has_unsafe_characters(pattern):
                raise ValueError(
                    f"invalid ignore pattern '{printable(pattern, max_chars=80)}': "
                    f"1-{MAX_PATTERN_LENGTH} characters without control characters"
                )
        if len(self.moving) > MAX_MOVING_TAGS:
            raise ValueError(f"at most {MAX_MOVING_TAGS} moving tags, not {len(self.moving)}")
        for tag in self.moving:
            if not is_valid_tag(tag):
                raise ValueError(f"invalid moving tag '{printable(tag, max_chars=160)}': not a valid tag name")
        return self

    @property
    def image(self) -> str:
        return f"{self.registry}/{self.repository}"


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


class TagState(Frozen):
    """What the auditor remembers about one (image, tag) between runs; kept apart from the trust store."""

    registry: str
    repository: str
    tag: str
    last_verdict: Verdict
    last_live_digest: Digest | None = None
    first_seen: datetime  # when the current verdict (with its live digest) was first seen
    last_seen: datetime  # when this tag was last checked
    last_alerted: datetime | None = None
    alert_count: int = 0
    consecutive_unverifiable: int = 0
    # The problem that was alerted and not yet resolved: (verdict, live digest). None when nothing is open.
    alerted_verdict: Verdict | None = None
    alerted_digest: Digest | None = None
    # Package files only (drift.decide_yank): the PEP 592 yank a notice announced and no notice resolved yet,
    # as its reason ("" when the index gave none); None when nothing is announced. Items without it read as None.
    yank_notified: str | None = None
    yank_notice_at: datetime | None = None  # when the last yank notice (new or resolved) went out

    @field_validator("last_verdict")
    @classmethod
    def _stored_before_no_longer_audited(cls, verdict: Verdict) -> Verdict:
        # A run never remembers `check`'s RESOLVED: a stored "resolved" is a tag that left the audit, saved
        # before that meaning had its own name.
        return Verdict.NO_LONGER_AUDITED if verdict is Verdict.RESOLVED else verdict

    @property
    def image(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def key(self) -> tuple[str, str]:
        return (self.image, self.tag)


class Finding(Frozen):
    """One alertable fact about one tag: the fields of `check --json` plus the evidence for a person."""

    reference: str
    registry: str
    repository: str
    tag: str | None
    trusted_digest: Digest | None
    live_digest: Digest | None
    status: Verdict
    reason: str | None
    checked_at: datetime
    platforms: dict[str, Digest] | None = None
    trusted_platforms: dict[str, Digest] | None = None
    source: str | None = None
    commit: str | None = None
    recorded_at: datetime | None = None
    first_seen: datetime | None = None
    notice: Notice = Notice.NEW
    # Package files only: the reason the index gives for serving the file yanked (PEP 592; "" when none), None
    # when it does not (or its listing was not read). Machine JSON carries it for package findings.
    yanked: str | None = None
    # Stable across runs for the same notice (see drift.with_finding_id): subscribers drop repeats by it.
    finding_id: str | None = None

    @property
    def image(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def alert_verdict(self) -> Verdict | Notice:
        """What a message is grouped and filtered by: the verdict, or Notice.RESOLVED for every resolved notice."""
        return Notice.RESOLVED if self.notice is Notice.RESOLVED else self.status


class CiRun(Frozen):
    """One CI run (GitHub workflow run, GitLab job, or a saved log) whose logs may show pushed digests."""

    source: str  # the run's web URL: what a person opens to check the evidence
    commit: str | None = None
    started_at: datetime | None = None
    handle: str = ""  # what the adapter needs to fetch the logs (run id, job id, file path)


class JobLog(Frozen):
    """The log of one job, split into steps where the CI says where steps begin (name None: unknown)."""

    job: str
    steps: tuple[tuple[str | None, str], ...]


class LogStatus(StrEnum):
    READ = "read"
    EXPIRED = "log-expired"  # past retention (GitHub 410/404, GitLab erased trace)
    UNREADABLE = "log-unreadable"  # refused (too big, zip bomb, bad entry names) or the download failed


class RunLogs(Frozen):
    status: LogStatus
    jobs: tuple[JobLog, ...] = ()
    reason: str | None = None


class TrustSnapshot(NamedTuple):
    """Everything the audit reads from the trust store at the start of a run."""

    trusted: list[TrustedImage]
    watch: list[WatchSettings]
    rejected_watch: list[RejectedWatch] = []  # noqa: RUF012 - a NamedTuple default, never mutated
