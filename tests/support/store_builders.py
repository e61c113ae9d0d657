"""Small builders of trust records and tag states shared by the store tests (unit and integration)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from audit.models import Digest, MovingMode, Verdict
from audit.records import TagState, TrustedImage, WatchSettings

RECORDED_AT = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
IMAGE = "ghcr.io/org/app"


def digest(char: str) -> Digest:
    return Digest.parse("sha256:" + char * 64)


def trusted(
    tag: str = "1.0",
    char: str = "a",
    *,
    repository: str = "org/app",
    registry: str = "ghcr.io",
    minutes: int = 0,
    **fields: object,
) -> TrustedImage:
    values: dict[str, object] = {
        "registry": registry,
        "repository": repository,
        "tag": tag,
        "digest": digest(char),
        "source": "https://ci.example.com/run/1",
        "recorded_at": RECORDED_AT + timedelta(minutes=minutes),
    }
    values.update(fields)
    return TrustedImage.model_validate(values)


def full_record(tag: str = "2.0") -> TrustedImage:
    """A record with every optional field set."""
    return trusted(
        tag,
        "d",
        platforms={"linux/amd64": digest("e"), "linux/arm64/v8": digest("f")},
        media_type="application/vnd.oci.image.index.v1+json",
        commit="0123456789abcdef",
        recorded_by="ci-bot",
        reason="rebuilt, see TICKET-1",
    )


def watch(repository: str = "org/app", **fields: object) -> WatchSettings:
    values: dict[str, object] = {"registry": "ghcr.io", "repository": repository}
    values.update(fields)
    return WatchSettings.model_validate(values)


def moving_watch() -> WatchSettings:
    return watch(track_new_tags=True, ignore=("*-rc*", "sha-*"), moving={"latest": MovingMode.ANY_TRUSTED})


def state(tag: str = "1.0", *, repository: str = "org/app", **fields: object) -> TagState:
    values: dict[str, object] = {
        "registry": "ghcr.io",
        "repository": repository,
        "tag": tag,
        "last_verdict": Verdict.MATCH,
        "first_seen": RECORDED_AT,
        "last_seen": RECORDED_AT + timedelta(hours=1),
    }
    values.update(fields)
    return TagState.model_validate(values)


def alerted_state(tag: str = "1.0") -> TagState:
    """A state with every optional field set."""
    return state(
        tag,
        last_verdict=Verdict.DRIFT,
        last_live_digest=digest("b"),
        last_alerted=RECORDED_AT + timedelta(hours=2),
        alert_count=3,
        consecutive_unverifiable=2,
        alerted_verdict=Verdict.DRIFT,
        alerted_digest=digest("b"),
    )
