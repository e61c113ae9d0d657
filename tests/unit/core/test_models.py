"""The shared models' own rules: the one time format, media types and verdicts read from stores."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from audit.models import ImageRef, LiveStatus, MediaType, Observation, Verdict, iso_utc
from audit.records import TagState, TrustedImage

RECORD = {
    "registry": "ghcr.io",
    "repository": "org/app",
    "tag": "1.0",
    "digest": "sha256:" + "a" * 64,
    "source": "https://ci.example/runs/1",
    "recorded_at": "2025-01-02T03:04:05Z",
}


def test_iso_utc_normalises_to_z() -> None:
    assert iso_utc(datetime(2025, 1, 2, 3, 4, 5)) == "2025-01-02T03:04:05Z"
    plus_two = datetime(2025, 1, 2, 5, 4, 5, tzinfo=UTC).astimezone(ZoneInfo("Europe/Amsterdam"))
    assert iso_utc(plus_two) == "2025-01-02T05:04:05Z"
    assert iso_utc(datetime(2025, 1, 2, 3, 4, 5, 120, tzinfo=UTC)) == "2025-01-02T03:04:05.000120Z"
    assert iso_utc(None) is None


def test_a_known_media_type_is_the_enum_and_an_unknown_one_reads_as_unknown() -> None:
    known = TrustedImage.model_validate({**RECORD, "media_type": MediaType.OCI_INDEX.value})
    assert known.media_type is MediaType.OCI_INDEX
    assert known.model_dump(mode="json")["media_type"] == MediaType.OCI_INDEX.value  # stored as before
    for unknown in ("application/vnd.example.manifest+json", MediaType.OCI_INDEX.value.upper(), ""):
        assert TrustedImage.model_validate({**RECORD, "media_type": unknown}).media_type is None
    observation = Observation(
        ref=ImageRef.parse("ghcr.io/org/app:1.0"),
        status=LiveStatus.FOUND,
        media_type="text/html",  # type: ignore[arg-type]  # untyped text, read as the models read it
    )
    assert observation.media_type is None


def test_a_state_stored_as_resolved_reads_as_no_longer_audited() -> None:
    stored = {
        "registry": "ghcr.io",
        "repository": "org/app",
        "tag": "1.0",
        "last_verdict": "resolved",  # what `run` saved for a tag that left the audit, before the value had a name
        "first_seen": "2025-01-02T03:04:05Z",
        "last_seen": "2025-01-02T03:04:05Z",
    }
    state = TagState.model_validate(stored)
    assert state.last_verdict is Verdict.NO_LONGER_AUDITED
    assert state.model_dump(mode="json")["last_verdict"] == "no-longer-audited"
    assert TagState.model_validate({**stored, "last_verdict": "match"}).last_verdict is Verdict.MATCH
