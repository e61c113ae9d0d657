"""The shared models' own rules: the one time format, media types and verdicts read from stores."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from audit.models import iso_utc


def test_iso_utc_normalises_to_z() -> None:
    assert iso_utc(datetime(2025, 1, 2, 3, 4, 5)) == "2025-01-02T03:04:05Z"
    plus_two = datetime(2025, 1, 2, 5, 4, 5, tzinfo=UTC).astimezone(ZoneInfo("Europe/Amsterdam"))
    assert iso_utc(plus_two) == "2025-01-02T05:04:05Z"
    assert iso_utc(datetime(2025, 1, 2, 3, 4, 5, 120, tzinfo=UTC)) == "2025-01-02T03:04:05.000120Z"
    assert iso_utc(None) is None
