"""The record rules every writer of trusted digests follows (`record`, `trust backfill`, `trust import`): one
place decides.

A moving tag (declared with `watch --moving`) appends a new digest; a pinned tag with another trusted digest is
a conflict unless replaced with a reason. The store enforces the conditional write.
"""

from __future__ import annotations

from audit.models import RecordOutcome
from audit.ports import TrustRecorder
from audit.records import TrustedImage, WatchSettings


def is_moving(store: TrustRecorder, image: str, tag: str) -> bool:
    return MovingTags(store)(image, tag)


def record_trusted(store: TrustRecorder, item: TrustedImage, *, replace: bool) -> RecordOutcome:
    """Record through the store's conditional write, appending when the tag is declared moving."""
    return store.record(item, replace=replace, moving=is_moving(store, item.image, item.tag))


class MovingTags:
    """`is_moving` for a writer of many tags (an import): each repository's watch settings are read once."""

    def __init__(self, store: TrustRecorder) -> None:
        self._store = store
        self._settings: dict[str, WatchSettings | None] = {}

    def __call__(self, image: str, tag: str) -> bool:
        if image not in self._settings:
            self._settings[image] = self._store.get_watch_settings(image)
        settings = self._settings[image]
        return settings is not None and tag in settings.moving
