"""What a request to record a trusted digest means, decided without I/O, so every trust store follows one rule.

Same digest again is a no-op; a new tag is created; a different digest is a conflict unless the tag is replaced
with a reason (pinned) or declared moving (appended). A store reads the current record, asks `decide_record`,
and performs the conditional write the decision names; the messages of both stores come from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from audit.errors import TrustConflictError, UsageError
from audit.models import Digest, RecordOutcome
from audit.records import TrustedImage


@dataclass(frozen=True)
class RecordDecision:
    """The write a record request asks for: `superseded` is the current record to keep as history (REPLACED,
    APPENDED), None otherwise; UNCHANGED writes nothing, CREATED puts the first record of the tag."""

    outcome: RecordOutcome
    superseded: TrustedImage | None = None


def check_record_request(item: TrustedImage, *, replace: bool) -> None:
    """A replace must say why: the reason is kept with the new record as evidence."""
    if replace and not (item.reason and item.reason.strip()):
        raise UsageError(
            f"replacing the trusted digest of {item.ref.familiar} needs a reason",
            hint="pass --replace --reason TEXT (e.g. the ticket of the re-release); the old record is kept",
        )


def decide_record(current: TrustedImage | None, new: TrustedImage, *, replace: bool, moving: bool) -> RecordDecision:
    """Judge `new` against the tag's `current` record (None: not recorded yet).

    Raises UsageError for a replace without a reason and TrustConflictError for a different digest of a tag
    that is neither replaced nor moving; nothing is written in either case.
    """
    check_record_request(new, replace=replace)
    if current is None:
        return RecordDecision(RecordOutcome.CREATED)
    if current.digest == new.digest:
        return RecordDecision(RecordOutcome.UNCHANGED)
    if not (replace or moving):
        raise trust_conflict_error(current, new)
    return RecordDecision(RecordOutcome.REPLACED if replace else RecordOutcome.APPENDED, superseded=current)


def trust_conflict_error(current: TrustedImage, item: TrustedImage) -> TrustConflictError:
    return TrustConflictError(
        f"{item.ref.familiar} is already trusted as {current.digest} "
        f"(recorded {current.recorded_at:%Y-%m-%d} from {current.source}); refusing to trust {item.digest}"
    )


def concurrent_change_error(item: TrustedImage, *, expected: Digest | None, now: Digest | None) -> TrustConflictError:
    """Another recorder changed the tag between our read and our conditional write; nothing was written."""
    before = f"was {expected}" if expected is not None else "was not recorded"
    after = f", now {now}" if now is not None else ""
    return TrustConflictError(
        f"{item.ref.familiar} changed while recording {item.digest} ({before}{after}); nothing was written",
        hint="another recorder wrote this tag at the same time; re-run to see the current record",
    )
