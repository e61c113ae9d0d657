"""The record rules, decided without a store: table-driven cases and properties over every request."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.errors import TrustConflictError, UsageError
from audit.models import RecordOutcome
from audit.record_rules import RecordDecision, concurrent_change_error, decide_record
from audit.records import TrustedImage
from tests.support.store_builders import digest, trusted

CURRENT = trusted("1.0", "a")


@pytest.mark.parametrize(
    ("current", "new", "replace", "moving", "expected"),
    [
        (None, trusted("1.0", "a"), False, False, RecordDecision(RecordOutcome.CREATED)),
        (None, trusted("1.0", "a"), False, True, RecordDecision(RecordOutcome.CREATED)),
        (None, trusted("1.0", "a", reason="first"), True, False, RecordDecision(RecordOutcome.CREATED)),
        (CURRENT, trusted("1.0", "a", minutes=5), False, False, RecordDecision(RecordOutcome.UNCHANGED)),
        (CURRENT, trusted("1.0", "a"), False, True, RecordDecision(RecordOutcome.UNCHANGED)),
        (CURRENT, trusted("1.0", "a", reason="again"), True, False, RecordDecision(RecordOutcome.UNCHANGED)),
        (CURRENT, trusted("1.0", "b", reason="TICKET-1"), True, False, RecordDecision(RecordOutcome.REPLACED, CURRENT)),
        (CURRENT, trusted("1.0", "b", reason="TICKET-1"), True, True, RecordDecision(RecordOutcome.REPLACED, CURRENT)),
        (CURRENT, trusted("1.0", "b"), False, True, RecordDecision(RecordOutcome.APPENDED, CURRENT)),
    ],
)
def test_what_a_record_request_means(
    current: TrustedImage | None, new: TrustedImage, replace: bool, moving: bool, expected: RecordDecision
) -> None:
    assert decide_record(current, new, replace=replace, moving=moving) == expected


def test_a_different_digest_of_a_pinned_tag_is_a_conflict_with_todays_message_and_hint() -> None:
    with pytest.raises(TrustConflictError) as raised:
        decide_record(CURRENT, trusted("1.0", "b"), replace=False, moving=False)
    assert raised.value.message == (
        f"ghcr.io/org/app:1.0 is already trusted as {digest('a')} "
        f"(recorded 2024-05-01 from https://ci.example.com/run/1); refusing to trust {digest('b')}"
    )
    assert raised.value.hint == (
        "if the new digest is a legitimate re-release, re-run with --replace --reason TEXT; "
        "the previous record is kept as history"
    )


@pytest.mark.parametrize("current", [None, CURRENT])
@pytest.mark.parametrize("reason", [None, "", "  "])
def test_a_replace_without_a_reason_is_a_usage_error_whatever_is_recorded(
    current: TrustedImage | None, reason: str | None
) -> None:
    with pytest.raises(UsageError, match="needs a reason") as raised:
        decide_record(current, trusted("1.0", "b", reason=reason), replace=True, moving=False)
    assert "--replace --reason TEXT" in (raised.value.hint or "")


def test_a_concurrent_change_names_both_digests() -> None:
    error = concurrent_change_error(trusted("1.0", "b"), expected=digest("a"), now=digest("c"))
    assert error.message == (
        f"ghcr.io/org/app:1.0 changed while recording {digest('b')} "
        f"(was {digest('a')}, now {digest('c')}); nothing was written"
    )


hex_chars = st.sampled_from("0123456789abcdef")
reasons = st.none() | st.sampled_from(["", " ", "TICKET-1"])


@given(
    current_char=st.none() | hex_chars,
    new_char=hex_chars,
    reason=reasons,
    replace=st.booleans(),
    moving=st.booleans(),
)
def test_every_request_has_exactly_one_meaning(
    current_char: str | None, new_char: str, reason: str | None, replace: bool, moving: bool
) -> None:
    current = trusted("1.0", current_char) if current_char is not None else None
    new = trusted("1.0", new_char, reason=reason, minutes=1)
    has_reason = bool(reason and reason.strip())
    if replace and not has_reason:
        with pytest.raises(UsageError):
            decide_record(current, new, replace=replace, moving=moving)
        return
    if current is not None and current.digest != new.digest and not (replace or moving):
        with pytest.raises(TrustConflictError):
            decide_record(current, new, replace=replace, moving=moving)
        return
    decision = decide_record(current, new, replace=replace, moving=moving)
    if current is None:
        assert decision == RecordDecision(RecordOutcome.CREATED)
    elif current.digest == new.digest:
        assert decision == RecordDecision(RecordOutcome.UNCHANGED)
    else:
        # The superseded record is the current one, unchanged, so the store keeps it as history.
        assert decision.superseded is current
        assert decision.outcome is (RecordOutcome.REPLACED if replace else RecordOutcome.APPENDED)
