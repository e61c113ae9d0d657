"""Property tests: every serialisation of trust records, watch settings and tag states round-trips exactly."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from hypothesis import given, settings
from hypothesis import strategies as st

from audit.adapters.dynamodb_store import (
    format_timestamp,
    tag_state_from_item,
    tag_state_to_item,
    trusted_image_from_item,
    trusted_image_to_item,
    watch_settings_from_item,
    watch_settings_to_item,
)
from audit.adapters.file_store import FileStateStore, FileTrustStore
from audit.app.trust_transfer import export_trust, import_trust
from audit.models import Digest, ImageRef, MediaType, MovingMode, Verdict
from audit.records import TagState, TrustedImage, WatchSettings

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef

REGISTRIES = ["ghcr.io", "registry-1.docker.io", "localhost:5000", "127.0.0.1:5000", "registry.example.com"]
COMPONENT = r"[a-z0-9]{1,8}(?:(?:\.|_|__|-+)[a-z0-9]{1,8}){0,2}"
TAG = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,24}"

digests = st.sampled_from([("sha256", 64), ("sha512", 128)]).flatmap(
    lambda spec: st.text("0123456789abcdef", min_size=spec[1], max_size=spec[1]).map(
        lambda hex_part: Digest(algorithm=spec[0], hex=hex_part)
    )
)
moments = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC))
# What record and import accept: any text without control or format characters (those are refused on input).
visible = st.characters(exclude_categories=["Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"])
optional_text = st.none() | st.text(visible, min_size=1, max_size=40)
required_text = st.text(visible, min_size=1, max_size=40).filter(str.strip)
tags = st.from_regex(TAG, fullmatch=True)


@st.composite
def image_refs(draw: st.DrawFn) -> ImageRef:
    registry = draw(st.sampled_from(REGISTRIES))
    path = "/".join(draw(st.lists(st.from_regex(COMPONENT, fullmatch=True), min_size=1, max_size=3)))
    return ImageRef.parse(f"{registry}/{path}:{draw(tags)}")  # normalised as every writer stores it


@st.composite
def trusted_images(draw: st.DrawFn) -> TrustedImage:
    ref = draw(image_refs())
    assert ref.tag is not None
    return TrustedImage(
        registry=ref.registry,
        repository=ref.repository,
        tag=ref.tag,
        digest=draw(digests),
        platforms=draw(st.none() | st.dictionaries(st.text(min_size=1, max_size=20), digests, max_size=3)),
        media_type=draw(st.none() | st.sampled_from(MediaType)),
        source=draw(required_text),
        commit=draw(optional_text),
        recorded_at=draw(moments),
        recorded_by=draw(optional_text),
        reason=draw(optional_text),
    )


# Ignore patterns refuse control and format characters (WatchSettings validation).
SAFE_CHARACTERS = st.characters(blacklist_categories=("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"))


@st.composite
def watch_settings(draw: st.DrawFn) -> WatchSettings:
    ref = draw(image_refs())
    return WatchSettings(
        registry=ref.registry,
        repository=ref.repository,
        track_new_tags=draw(st.booleans()),
        ignore=tuple(draw(st.lists(st.text(SAFE_CHARACTERS, min_size=1, max_size=12), max_size=4))),
        moving=draw(st.dictionaries(tags, st.sampled_from(MovingMode), max_size=3)),
    )


@st.composite
def tag_states(draw: st.DrawFn) -> TagState:
    ref = draw(image_refs())
    assert ref.tag is not None
    return TagState(
        registry=ref.registry,
        repository=ref.repository,
        tag=ref.tag,
        last_verdict=draw(st.sampled_from(Verdict)),
        last_live_digest=draw(st.none() | digests),
        first_seen=draw(moments),
        last_seen=draw(moments),
        last_alerted=draw(st.none() | moments),
        alert_count=draw(st.integers(min_value=0, max_value=10**6)),
        consecutive_unverifiable=draw(st.integers(min_value=0, max_value=10**6)),
        alerted_verdict=draw(st.none() | st.sampled_from(Verdict)),
        alerted_digest=draw(st.none() | digests),
        yank_notified=draw(st.none() | st.just("") | st.text(SAFE_CHARACTERS, max_size=20)),
        yank_notice_at=draw(st.none() | moments),
    )


record_lists = st.lists(trusted_images(), max_size=5, unique_by=lambda record: (record.image, record.tag))


@given(trusted_images())
def test_trust_items_round_trip(record: TrustedImage) -> None:
    assert trusted_image_from_item(trusted_image_to_item(record)) == record


@given(watch_settings())
def test_watch_items_round_trip(settings_: WatchSettings) -> None:
    assert watch_settings_from_item(watch_settings_to_item(settings_)) == settings_


@given(tag_states())
def test_state_items_round_trip(state: TagState) -> None:
    assert tag_state_from_item(tag_state_to_item(state)) == state


@given(moments, moments)
def test_stored_timestamps_sort_like_the_instants(first: datetime, second: datetime) -> None:
    assert (format_timestamp(first) < format_timestamp(second)) == (first < second)
    assert len(format_timestamp(first)) == len("2024-05-01T12:00:00.000000Z")
    assert datetime.fromisoformat(format_timestamp(first)) == first


@settings(deadline=None, max_examples=60)
@given(record_lists, st.sampled_from(["csv", "json"]))
def test_export_then_import_reproduces_every_record(records: list[TrustedImage], fmt: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        source = FileTrustStore(Path(directory) / "source.json")
        for record in records:
            source.record(record)
        target = FileTrustStore(Path(directory) / "target.json")
        summary = import_trust(target, export_trust(source, fmt), fmt)
        assert target.load_all() == source.load_all()
        assert len(summary.created) == len(records)
        again = import_trust(target, export_trust(source, fmt), fmt)
        assert len(again.unchanged) == len(records)
        assert again.created == () and again.conflicts == ()


@settings(deadline=None, max_examples=40)
@given(record_lists, st.lists(watch_settings(), max_size=3, unique_by=lambda entry: entry.image))
def test_the_trust_file_round_trips(records: list[TrustedImage], all_settings: list[WatchSettings]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = FileTrustStore(Path(directory) / "trusted.json")
        for record in records:
            store.record(record)
        for entry in all_settings:
            store.put_watch_settings(entry)
        reopened = FileTrustStore(Path(directory) / "trusted.json")
        assert reopened.load_all() == sorted(records, key=lambda record: (record.image, record.tag))
        assert reopened.load_watch_settings() == sorted(all_settings, key=lambda entry: entry.image)


@settings(deadline=None, max_examples=40)
@given(st.lists(tag_states(), max_size=6, unique_by=lambda state: state.key))
def test_the_state_file_round_trips(states: list[TagState]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        FileStateStore(Path(directory) / "state.json").save(states)
        assert FileStateStore(Path(directory) / "state.json").load_all() == {state.key: state for state in states}


def test_state_items_written_before_yank_notices_still_read_and_image_items_keep_their_attributes() -> None:
    old_item: dict[str, AttributeValueTypeDef] = {
        "image": {"S": "registry.example.com/org/app"},
        "tag": {"S": "1.0"},
        "registry": {"S": "registry.example.com"},
        "repository": {"S": "org/app"},
        "last_verdict": {"S": "match"},
        "first_seen": {"S": "2026-01-01T00:00:00.000000Z"},
        "last_seen": {"S": "2026-01-02T00:00:00.000000Z"},
        "alert_count": {"N": "0"},
        "consecutive_unverifiable": {"N": "0"},
    }
    state = tag_state_from_item(old_item)
    assert (state.yank_notified, state.yank_notice_at) == (None, None)
    assert tag_state_to_item(state) == old_item  # nothing new is written for a tag that was never yanked
    yanked = state.model_copy(update={"yank_notified": "", "yank_notice_at": datetime(2026, 1, 3, tzinfo=UTC)})
    item = tag_state_to_item(yanked)
    assert (item["yank_notified"], item["yank_notice_at"]) == ({"S": ""}, {"S": "2026-01-03T00:00:00.000000Z"})
    assert tag_state_from_item(item) == yanked
