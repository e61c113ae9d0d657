"""The watch use case: options change only what they name, showing never writes, invalid settings are refused."""

from __future__ import annotations

import pytest

from audit.app.watch import WatchChanges, update_package_watch, update_watch
from audit.errors import UsageError
from audit.models import MovingMode
from audit.packages import registry_key
from tests.support.memory_ports import MemoryTrustStore
from tests.support.store_builders import watch


def test_showing_the_settings_of_an_unknown_repository_writes_nothing() -> None:
    store = MemoryTrustStore()
    shown = update_watch(store, "ghcr.io", "org/app", WatchChanges())
    assert shown == watch()
    assert store.writes == []


def test_changes_apply_to_what_they_name_and_keep_the_rest() -> None:
    store = MemoryTrustStore()
    store.put_watch_settings(watch(ignore=("sha-*",), moving={"edge": MovingMode.ANY_TRUSTED}))
    changes = WatchChanges(
        track_new_tags=True,
        ignore=["*-rc*", "sha-*"],
        moving=[("latest", MovingMode.LATEST_RECORDED), ("latest", MovingMode.ANY_TRUSTED)],
        pinned=["edge"],
    )
    updated = update_watch(store, "ghcr.io", "org/app", changes)
    assert updated == watch(track_new_tags=True, ignore=("sha-*", "*-rc*"), moving={"latest": MovingMode.ANY_TRUSTED})
    assert store.get_watch_settings("ghcr.io/org/app") == updated
    removed = update_watch(store, "ghcr.io", "org/app", WatchChanges(no_ignore=["sha-*"]))
    assert removed.ignore == ("*-rc*",)
    assert removed.track_new_tags is True


def test_a_change_that_changes_nothing_is_not_written() -> None:
    store = MemoryTrustStore()
    store.put_watch_settings(watch(track_new_tags=True))
    store.writes.clear()
    update_watch(store, "ghcr.io", "org/app", WatchChanges(track_new_tags=True))
    assert store.writes == []


def test_settings_beyond_their_bounds_are_a_usage_error_naming_the_repository() -> None:
    store = MemoryTrustStore()
    with pytest.raises(UsageError, match=r"^invalid watch settings for ghcr.io/org/app: .*ignore"):
        update_watch(store, "ghcr.io", "org/app", WatchChanges(ignore=[f"p{n}" for n in range(101)]))
    assert store.writes == []


def test_a_package_project_only_tracks_new_releases_and_writes_only_when_asked() -> None:
    store = MemoryTrustStore()
    registry = registry_key("https://pypi.org/simple")
    shown = update_package_watch(store, registry, "demo-pkg", track=None)
    assert (shown.track_new_tags, store.writes) == (False, [])
    tracked = update_package_watch(store, registry, "demo-pkg", track=True)
    assert tracked.track_new_tags is True
    assert store.writes == [f"watch {tracked.image}"]
