"""What one observation says: the opening rules every verdict shares, and `check`'s verdict of one reference.

`drift` builds a run's verdicts on these rules (`judge`, `package_verdict`); `check` needs only this module, so a
`check` process loads neither the run's decisions nor the package side. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from audit.models import Digest, LiveStatus, MediaType, Observation, Verdict
from audit.platforms import Platform, select_platform

if TYPE_CHECKING:
    from audit.drift import PlatformChanges


@dataclass(frozen=True, slots=True)
class Judgement:
    """The verdict about one tag in one run, with a reason a person can act on."""

    verdict: Verdict
    reason: str | None = None
    platform_changes: PlatformChanges | None = None  # set for a drift between two known indexes


def established(observation: Observation, *, missing: str) -> Digest | Judgement:
    """The live digest, or the verdict of an observation that did not establish one (the opening rules of every
    verdict: nothing that was not established is ever a match; `missing` is the reason for a MISSING one)."""
    if observation.status is LiveStatus.UNVERIFIABLE:
        return Judgement(Verdict.UNVERIFIABLE, observation.reason or "the registry did not establish a digest")
    if observation.status is LiveStatus.MISSING:
        return Judgement(Verdict.MISSING, observation.reason or missing)
    if observation.live_digest is None:  # FOUND without a digest breaks the client's contract
        return Judgement(Verdict.UNVERIFIABLE, "the registry answered without a digest")
    return observation.live_digest


def platform_of(digest: Digest, platforms: Mapping[str, Digest] | None) -> str | None:
    """The platform of an index whose child is `digest` (the first by name), if any."""
    for platform, child in sorted((platforms or {}).items()):
        if child == digest:
            return platform
    return None


def is_index(media_type: MediaType | None) -> bool:
    """Known to be an index (a media type not known says neither)."""
    return media_type is not None and media_type.is_index


def is_single(media_type: MediaType | None) -> bool:
    """Known to be a single-platform manifest (a media type not known says neither)."""
    return media_type is not None and not media_type.is_index


def check_verdict(
    observation: Observation, pinned: Digest | None, platform: Platform | None = None
) -> tuple[Verdict, str | None]:
    """The verdict of `digest-audit check` for one reference.

    No pin: RESOLVED when a digest was established. With a pin: MATCH or DRIFT. With a platform, the child
    digest of that platform (matched as `docker pull --platform` matches: `arm64` is `arm64/v8`) is what is
    resolved or compared; a tag that is not a multi-platform index is UNVERIFIABLE for a platform query (a single
    manifest does not say which platform it is built for without its config), and so is a platform the index
    does not have (the tag exists, so never MISSING; the caller treats it as a usage problem, see
    `platform_absent`). A pin equal to the index digest itself matches (the index names its children). Without a
    platform, a pin that is only a child of the live index is a DRIFT whose reason suggests `--platform`.
    """
    top = established(observation, missing="the registry has no manifest for this reference")
    if isinstance(top, Judgement):
        return top.verdict, top.reason
    if platform is None:
        if pinned is None:
            return Verdict.RESOLVED, None
        if top == pinned:
            return Verdict.MATCH, None
        child_of = platform_of(pinned, observation.platforms)
        if child_of is not None:
            return Verdict.DRIFT, (
                f"the pinned digest is the {child_of} child of the live index {top.short}; "
                f"add --platform {child_of} to compare that child"
            )
        return Verdict.DRIFT, f"serves {top.short}, pinned {pinned.short}"

    if observation.platforms is None:
        if is_single(observation.media_type):
            return Verdict.UNVERIFIABLE, f"not a multi-platform index: cannot select {platform}"
        return Verdict.UNVERIFIABLE, f"the platforms of the index were not read: cannot select {platform}"
    selected = select_platform(observation.platforms, platform)
    if selected is None:
        present = ", ".join(observation.platforms) or "no platforms"
        return Verdict.UNVERIFIABLE, f"platform {platform} is not in the index (it has {present})"
    entry, child = selected
    if pinned is None:
        return Verdict.RESOLVED, f"{entry} child of index {top.short}"
    if child == pinned:
        return Verdict.MATCH, f"{entry} child of index {top.short}"
    if top == pinned:
        return Verdict.MATCH, "the pinned digest is the index itself, which is unchanged"
    return Verdict.DRIFT, f"the {entry} child is {child.short}, pinned {pinned.short} (index {top.short})"


def platform_absent(observation: Observation, platform: Platform | None) -> bool:
    """True when the tag is an index that was read and has no child for `platform` (a usage problem)."""
    if platform is None or observation.status is not LiveStatus.FOUND or observation.platforms is None:
        return False
    return select_platform(observation.platforms, platform) is None
