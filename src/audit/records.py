"""The records digest-audit stores, imports and exports, as frozen pydantic models.

Trust records, watch settings, tag states, findings and CI runs are validated wherever they are read (files,
DynamoDB items, imports, events) and dumped as JSON: pydantic does both. The value types they are made of
(digests, references, observations, verdicts) are in `audit.models`, free of pydantic, so that `check`
never imports it (issue 11: about 0.1 s of every process).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, NamedTuple, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from audit.models import (
    Digest,
    ImageRef,
    LogStatus,
    MediaType,
    MovingMode,
    Notice,
    RejectedWatch,
    Verdict,
    known_media_type,
)
from audit.reference import is_valid_image, is_valid_tag
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


def _known_media_type(value: object) -> object:
    """Text as `models.known_media_type` reads it (unknown: None); anything else is left to pydantic, whose
    ValidationError makes a bad record a finding rather than the end of a run."""
    return known_media_type(value) if isinstance(value, str) else value


#: A manifest's media type where it is carried (observations, trust records, findings): one of ours, or unknown.
KnownMediaType = Annotated[MediaType | None, BeforeValidator(_known_media_type)]


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


class RunLogs(Frozen):
    status: LogStatus
    jobs: tuple[JobLog, ...] = ()
    reason: str | None = None


class TrustSnapshot(NamedTuple):
    """Everything the audit reads from the trust store at the start of a run."""

    trusted: list[TrustedImage]
    watch: list[WatchSettings]
    rejected_watch: list[RejectedWatch] = []  # noqa: RUF012 - a NamedTuple default, never mutated
