"""`check`: what digest each reference's tag has right now, and is it the one pinned? No store, no alert."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from audit.models import Digest, ImageRef, Observation, Verdict
from audit.platforms import Platform, select_platform
from audit.ports import Registry
from audit.verdicts import check_verdict, platform_absent
from audit.workers import drain


@dataclass(frozen=True)
class CheckResult:
    """One reference checked: what the registry serves and the verdict against the pinned digest (if any)."""

    ref: ImageRef
    observation: Observation
    verdict: Verdict
    reason: str | None
    live_digest: Digest | None  # the platform's child digest with a platform, else the tag's
    platform: str | None  # as the index spells it (linux/arm64/v8 for linux/arm64); as asked when not found
    platform_absent: bool  # the tag exists but was never built for the asked platform


def judge(ref: ImageRef, observation: Observation, platform: Platform | None) -> CheckResult:
    verdict, reason = check_verdict(observation, ref.digest, platform)
    live: Digest | None = observation.live_digest
    shown_platform = str(platform) if platform else None
    if platform is not None:
        selected = select_platform(observation.platforms or {}, platform)
        live = selected[1] if selected else None
        if selected is not None:
            shown_platform = selected[0]
    return CheckResult(ref, observation, verdict, reason, live, shown_platform, platform_absent(observation, platform))


async def check(
    registry: Registry,
    refs: Sequence[ImageRef],
    *,
    platform: Platform | None,
    platforms: bool,
    workers: int,
    answered: Callable[[int, CheckResult], None],
) -> None:
    """Every reference observed by a fixed set of workers (the client adapts requests in flight below it).

    Each result goes to `answered(index, result)` as it arrives and is not kept: memory per tag stays one row.
    """
    want_platforms = platforms or platform is not None

    async def observe(index: int) -> None:
        ref = refs[index]
        expected = ref.digest if ref.tag else None
        observation = await registry.observe(ref, expected=expected, platforms=want_platforms)
        answered(index, judge(ref, observation, platform))

    await drain(range(len(refs)), observe, workers=workers)
