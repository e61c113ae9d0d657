"""`watch`: per-repository settings (report new tags, ignore patterns, tags allowed to move), changed one at a time.

Options change only what they name; settings are written only when something was asked for and differs, so
showing the settings of a repository never writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from audit.errors import UsageError
from audit.models import MovingMode
from audit.ports import TrustRecorder
from audit.records import WatchSettings
from audit.reference import familiar_name


@dataclass(frozen=True)
class WatchChanges:
    """What to change; empty changes only show the settings. `moving` is applied in order, then `pinned`."""

    track_new_tags: bool | None = None
    ignore: Sequence[str] = ()
    no_ignore: Sequence[str] = ()
    moving: Sequence[tuple[str, MovingMode]] = ()
    pinned: Sequence[str] = ()

    @property
    def requested(self) -> bool:
        return bool(self.track_new_tags is not None or self.ignore or self.no_ignore or self.moving or self.pinned)


def update_watch(store: TrustRecorder, registry: str, repository: str, changes: WatchChanges) -> WatchSettings:
    """The repository's settings after `changes` (stored when they differ); invalid settings are a UsageError."""
    image = f"{registry}/{repository}"
    current = store.get_watch_settings(image) or WatchSettings(registry=registry, repository=repository)
    moving = dict(current.moving)
    for tag, mode in changes.moving:
        moving[tag] = mode
    for tag in changes.pinned:
        moving.pop(tag, None)
    ignore = [pattern for pattern in current.ignore if pattern not in changes.no_ignore]
    ignore.extend(pattern for pattern in changes.ignore if pattern not in ignore)
    try:
        updated = WatchSettings(
            registry=registry,
            repository=repository,
            track_new_tags=current.track_new_tags if changes.track_new_tags is None else changes.track_new_tags,
            ignore=tuple(ignore),
            moving=moving,
        )
    except ValidationError as exc:
        problem = "; ".join(error["msg"].removeprefix("Value error, ") for error in exc.errors())
        raise UsageError(f"invalid watch settings for {familiar_name(registry, repository)}: {problem}") from None
    if changes.requested and updated != current:
        store.put_watch_settings(updated)
    return updated


def update_package_watch(store: TrustRecorder, registry: str, project: str, *, track: bool | None) -> WatchSettings:
    """A `pypi:` project's settings: only new-release tracking applies to packages."""
    current = store.get_watch_settings(f"{registry}/{project}") or WatchSettings(registry=registry, repository=project)
    updated = current.model_copy(update={"track_new_tags": current.track_new_tags if track is None else track})
    if track is not None and updated != current:
        store.put_watch_settings(updated)
    return updated
