"""DynamoDB adapters: the trust table CI writes at push time, and the separate state table the auditor owns.

The audit role may only read the trust table, which is why audit state lives in a table of its own.

Trust table, key `image` (S, normalised `registry/repository`) + `sk` (S):

    sk = "tag#<tag>"                                    current record of a tag (+ `revision`, N)
    sk = "history#<tag>#<superseded_at>#<old digest>"   a record that was replaced or moved; never deleted
    sk = "$watch"                                       WatchSettings of the repository

Python package files use the same items (audit.packages): `image` = `pypi:<index URL>/<normalised project>`
(`registry` = `pypi:<index URL>`, `repository` = the project), tag = the wheel or sdist filename, validated
against its grammar (letters, digits and `._+!-`: never '#', '$' or '/'); no image name can start with
`pypi:`, so packages and images cannot collide, and items written before packages existed read as before.

Tags match `[A-Za-z0-9_][A-Za-z0-9._-]*`: they never contain '#' or '$', so the three kinds cannot collide
and `history#1.0#` never matches the history of `1.0.1`. "All tags of a repository" is one Query on `image`,
"everything" a paginated Scan. `superseded_at` is a fixed-width ISO 8601 UTC timestamp, so history sorts
oldest first. Attributes of trust items: registry, repository, tag, digest, platforms (M of S), media_type,
source, commit, recorded_at (ISO 8601 UTC), recorded_by, reason; history items add superseded_at/_by.

Writes are conditional: a new tag is put with `attribute_not_exists(sk)`; a replace or move is one
TransactWriteItems that copies the old record into history and overwrites the current one only if its
digest and `revision` are still the ones just read: a concurrent recorder loses with a clear error.

State table, key `image` (S) + `tag` (S): one item per TagState (datetimes as ISO strings, digests strings),
plus the run lease at image = "$lease", tag = "run" (owner, holder, acquired_at, expires_at as epoch seconds).
An image name is `registry/repository` and never starts with '$', so the reserved item cannot collide and
reading the state skips every item whose image starts with '$'.

A replace's TransactWriteItems carries a ClientRequestToken of our own: botocore resends it unchanged when
it retries a call whose response was lost (DynamoDB then answers success for 10 minutes); where the retry is
still judged against the new record (an emulator without tokens, or later), a current record that is exactly
the one we wrote is recognised as our own write, not as another recorder's.

Every botocore failure becomes a StoreError naming the table, the operation and what to check.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    WaiterError,
)
from pydantic import ValidationError

from audit.config import ENV_STATE_TABLE, ENV_TRUST_TABLE
from audit.errors import AuditError, InvalidReferenceError, StoreError
from audit.models import Digest, RecordOutcome, RejectedWatch, utcnow
from audit.ports import LeaseClaim
from audit.record_rules import check_record_request, concurrent_change_error, decide_record
from audit.records import TagState, TrustedImage, TrustSnapshot, WatchSettings
from audit.reference import MAX_TAG_LENGTH, is_valid_tag, tag_key
from audit.untrusted import printable

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import (
        AttributeValueTypeDef,
        QueryInputTypeDef,
        ScanInputTypeDef,
        WriteRequestOutputTypeDef,
        WriteRequestTypeDef,
    )

    Item = dict[str, AttributeValueTypeDef]

TRUST_PARTITION_KEY = "image"
TRUST_SORT_KEY = "sk"
STATE_PARTITION_KEY = "image"
STATE_SORT_KEY = "tag"
CURRENT_PREFIX = "tag#"
HISTORY_PREFIX = "history#"
WATCH_SORT_KEY = "$watch"
#: Reserved state-table items start with this (an image name never does).
RESERVED_PREFIX = "$"
LEASE_KEY = {STATE_PARTITION_KEY: "$lease", STATE_SORT_KEY: "run"}

#: Partition keys longer than this are hashed (DynamoDB allows 2,048 bytes; valid image names are ≤ 255 chars).
MAX_STATE_IMAGE_BYTES = 1024

#: BatchWriteItem accepts at most 25 requests.
BATCH_LIMIT = 25
#: Parallel Scan segments for the trust snapshot: enough to overlap the Scan with the checks and to read a
#: 10,000-record table (about 4 pages) in the time of one page; boto3 clients are thread-safe.
SCAN_SEGMENTS = 4
#: Items per snapshot Scan page (about 100 KB of records, 2.6 KB each once botocore has parsed them); 10,000
#: records are 40 calls, 4 at a time.
SNAPSHOT_PAGE_ITEMS = 250
#: Pages waiting for the reader beyond the one each segment holds: segments wait while the reader (who turns
#: pages into records, beside the checks) is behind, so raw pages never pile up (9,000 raw items did, at
#: 10,000 records, when they could not wait: issue 11).
READ_AHEAD_PAGES = 1
#: How often a segment that waits for the reader looks whether the reader has stopped.
_HAND_OVER_POLL_S = 0.1

_TRUST_NAMES = {"#image": TRUST_PARTITION_KEY, "#sk": TRUST_SORT_KEY}


# --- errors ------------------------------------------------------------------------------------------------


def store_error(exc: Exception, *, table: str, operation: str, variable: str) -> StoreError:
    """Translate a botocore failure into an operator-facing error (no credentials ever appear in it)."""
    where = f"DynamoDB {operation} on table {table!r}"
    checks = f"check {variable}, the AWS credentials, the region (AWS_DEFAULT_REGION) and AWS_ENDPOINT_URL"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "Unknown")
        text = error.get("Message", "")
        message = f"{where} failed: {code}" + (f": {text}" if text else "")
        if code == "ResourceNotFoundException":
            return StoreError(
                f"{where} failed: the table does not exist",
                hint=f"run `digest-audit init` or deploy the stack; else {checks}",
            )
        # DynamoDB reports a table key the caller may not use as "AccessDeniedException: KMS key access denied
        # error: ...": the table's permissions are fine, its customer-managed key is not.
        if code == "AccessDeniedException" and text.startswith("KMS key access denied"):
            return StoreError(
                message,
                hint=(
                    f"the IAM identity may not use the KMS key {table} is encrypted with: grant kms:Decrypt, "
                    "kms:Encrypt, kms:GenerateDataKey* and kms:DescribeKey on it (the stack output EvidenceKeyArn) "
                    f"with the condition kms:ViaService = dynamodb.<region>.amazonaws.com; {checks}"
                ),
            )
        if code in ("AccessDeniedException", "UnauthorizedOperation"):
            return StoreError(message, hint=f"the IAM identity lacks dynamodb:{operation} on {table}; {checks}")
        if code in (
            "UnrecognizedClientException",
            "InvalidSignatureException",
            "ExpiredTokenException",
            "MissingAuthenticationTokenException",
        ):
            return StoreError(message, hint=f"the AWS credentials were rejected; {checks}")
        if code in ("ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"):
            return StoreError(message, hint="the table is throttled; retry later or raise its capacity")
        return StoreError(message, hint=checks)
    if isinstance(exc, NoCredentialsError):
        return StoreError(
            f"{where} failed: no AWS credentials found",
            hint=f"configure credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID or a role); {checks}",
        )
    if isinstance(exc, EndpointConnectionError):
        return StoreError(f"{where} failed: {exc}", hint=f"the endpoint is unreachable; {checks}")
    return StoreError(f"{where} failed: {exc}", hint=checks)


def _error_code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _lost_race(exc: ClientError) -> bool:
    """A cancelled transaction whose condition failed (or that collided with another transaction)."""
    reasons = exc.response.get("CancellationReasons", [])
    codes = {str(reason.get("Code", "")) for reason in reasons}
    return bool(codes & {"ConditionalCheckFailed", "TransactionConflict"}) or not reasons


@contextmanager
def _translated(table: str, operation: str, variable: str) -> Iterator[None]:
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise store_error(exc, table=table, operation=operation, variable=variable) from exc


# --- attribute values --------------------------------------------------------------------------------------


def format_timestamp(moment: datetime) -> str:
    """Fixed-width ISO 8601 in UTC (`2024-05-01T12:00:00.000000Z`) so that strings sort like instants."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # naive datetimes in this code base are UTC by convention
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


class _MalformedItemError(Exception):
    """An item lacks an attribute or holds a value the models reject; becomes a StoreError."""


def _text(item: Mapping[str, AttributeValueTypeDef], name: str) -> str | None:
    value = item.get(name)
    if value is None or value.get("NULL"):
        return None
    text = value.get("S")
    if not isinstance(text, str):
        raise _MalformedItemError(f"attribute {name!r} is not a string")
    return text


def _required_text(item: Mapping[str, AttributeValueTypeDef], name: str) -> str:
    text = _text(item, name)
    if text is None:
        raise _MalformedItemError(f"attribute {name!r} is missing")
    return text


def _number(item: Mapping[str, AttributeValueTypeDef], name: str) -> int | None:
    value = item.get(name)
    if value is None:
        return None
    raw = value.get("N")
    try:
        return int(str(raw))
    except ValueError:
        raise _MalformedItemError(f"attribute {name!r} is not a whole number") from None


def _string_map(item: Mapping[str, AttributeValueTypeDef], name: str) -> dict[str, str] | None:
    value = item.get(name)
    if value is None or value.get("NULL"):
        return None
    raw = value.get("M")
    if not isinstance(raw, Mapping):
        raise _MalformedItemError(f"attribute {name!r} is not a map")
    result: dict[str, str] = {}
    for key, entry in raw.items():
        text = entry.get("S") if isinstance(entry, Mapping) else None
        if not isinstance(key, str) or not isinstance(text, str):
            raise _MalformedItemError(f"attribute {name!r} holds a value that is not a string")
        result[key] = text
    return result


def _string_list(item: Mapping[str, AttributeValueTypeDef], name: str) -> list[str]:
    value = item.get(name)
    if value is None:
        return []
    raw = value.get("L")
    if raw is None:
        raise _MalformedItemError(f"attribute {name!r} is not a list")
    result: list[str] = []
    for entry in raw:
        text = entry.get("S") if isinstance(entry, Mapping) else None
        if not isinstance(text, str):
            raise _MalformedItemError(f"attribute {name!r} holds a value that is not a string")
        result.append(text)
    return result


def _flag(item: Mapping[str, AttributeValueTypeDef], name: str) -> bool:
    value = item.get(name)
    if value is None:
        return False
    raw = value.get("BOOL")
    if not isinstance(raw, bool):
        raise _MalformedItemError(f"attribute {name!r} is not a boolean")
    return raw


def _put_optional(item: Item, name: str, text: str | None) -> None:
    if text is not None:
        item[name] = {"S": text}


def _validated[M: (TrustedImage, TagState, WatchSettings)](model: type[M], fields: dict[str, object]) -> M:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = ".".join(str(part) for part in first["loc"]) or "item"
        raise _MalformedItemError(f"{location}: {first['msg']}") from None
    except AuditError as exc:  # Digest and reference validators raise these instead of ValueError
        raise _MalformedItemError(exc.message) from None


def _key_text(item: Mapping[str, AttributeValueTypeDef], sort_key: str) -> str:
    parts = []
    for name in ("image", sort_key):
        value = item.get(name)
        parts.append(f"{name}={value.get('S')!r}" if value is not None else f"{name}=?")
    return ", ".join(parts)


def _malformed(exc: _MalformedItemError, item: Mapping[str, AttributeValueTypeDef], table: str, key: str) -> StoreError:
    return StoreError(
        f"item {_key_text(item, key)} in table {table!r} is malformed: {exc}",
        hint="it was not written by digest-audit (or by an incompatible version); fix or delete that item",
    )


# --- trust items -------------------------------------------------------------------------------------------


def _trust_tag(tag: str) -> str:
    """Trust keys hold valid tags only (≤ 128 characters, no '#'), so every key stays far below DynamoDB's
    1,024-byte sort key limit and the three kinds of items cannot collide: anything else is refused."""
    if not is_valid_tag(tag):
        raise InvalidReferenceError(
            f"invalid tag '{printable(tag, max_chars=160)}' for a trust record",
            hint=f"a tag is 1-{MAX_TAG_LENGTH} characters of letters, digits, '_', '.' and '-'",
        )
    return tag


def current_sort_key(tag: str) -> str:
    return f"{CURRENT_PREFIX}{_trust_tag(tag)}"


def history_prefix(tag: str) -> str:
    return f"{HISTORY_PREFIX}{_trust_tag(tag)}#"


def history_sort_key(tag: str, superseded_at: datetime, old_digest: Digest) -> str:
    return f"{history_prefix(tag)}{format_timestamp(superseded_at)}#{old_digest}"


def trusted_image_to_item(record: TrustedImage, *, sort_key: str | None = None) -> Item:
    """The DynamoDB item of a trust record (the current one unless another sort key is given)."""
    item: Item = {
        TRUST_PARTITION_KEY: {"S": record.image},
        TRUST_SORT_KEY: {"S": sort_key if sort_key is not None else current_sort_key(record.tag)},
        "registry": {"S": record.registry},
        "repository": {"S": record.repository},
        "tag": {"S": record.tag},
        "digest": {"S": str(record.digest)},
        "source": {"S": record.source},
        "recorded_at": {"S": format_timestamp(record.recorded_at)},
    }
    if record.platforms is not None:
        item["platforms"] = {"M": {platform: {"S": str(digest)} for platform, digest in record.platforms.items()}}
    _put_optional(item, "media_type", record.media_type)
    _put_optional(item, "commit", record.commit)
    _put_optional(item, "recorded_by", record.recorded_by)
    _put_optional(item, "reason", record.reason)
    return item


def _shared(names: dict[str, str], text: str | None) -> str | None:
    """One str object for a value many items repeat (registry, repository, media type, platform): each item's
    own copy from the response would be kept by its model, 10,000 times over for the same text (issue 11)."""
    return text if text is None else names.setdefault(text, text)


def trusted_image_from_item(
    item: Mapping[str, AttributeValueTypeDef], *, table: str = "?", names: dict[str, str] | None = None
) -> TrustedImage:
    """Inverse of `trusted_image_to_item`; a malformed item raises StoreError naming its key and table.
    `names`: texts already seen in the same read, shared rather than kept once per record."""
    names = {} if names is None else names
    try:
        platforms = _string_map(item, "platforms")
        fields: dict[str, object] = {
            "registry": _shared(names, _required_text(item, "registry")),
            "repository": _shared(names, _required_text(item, "repository")),
            "tag": _required_text(item, "tag"),
            "digest": _required_text(item, "digest"),
            "platforms": platforms and {_shared(names, key): digest for key, digest in platforms.items()},
            "media_type": _shared(names, _text(item, "media_type")),
            "source": _required_text(item, "source"),
            "commit": _text(item, "commit"),
            "recorded_at": _required_text(item, "recorded_at"),
            "recorded_by": _shared(names, _text(item, "recorded_by")),
            "reason": _text(item, "reason"),
        }
        return _validated(TrustedImage, fields)
    except _MalformedItemError as exc:
        raise _malformed(exc, item, table, TRUST_SORT_KEY) from None


def watch_settings_to_item(settings: WatchSettings) -> Item:
    return {
        TRUST_PARTITION_KEY: {"S": settings.image},
        TRUST_SORT_KEY: {"S": WATCH_SORT_KEY},
        "registry": {"S": settings.registry},
        "repository": {"S": settings.repository},
        "track_new_tags": {"BOOL": settings.track_new_tags},
        "ignore": {"L": [{"S": pattern} for pattern in settings.ignore]},
        "moving": {"M": {tag: {"S": mode.value} for tag, mode in settings.moving.items()}},
    }


def watch_settings_from_item(item: Mapping[str, AttributeValueTypeDef], *, table: str = "?") -> WatchSettings:
    try:
        fields: dict[str, object] = {
            "registry": _required_text(item, "registry"),
            "repository": _required_text(item, "repository"),
            "track_new_tags": _flag(item, "track_new_tags"),
            "ignore": tuple(_string_list(item, "ignore")),
            "moving": _string_map(item, "moving") or {},
        }
        return _validated(WatchSettings, fields)
    except _MalformedItemError as exc:
        raise _malformed(exc, item, table, TRUST_SORT_KEY) from None


# --- state items -------------------------------------------------------------------------------------------


def state_sort_key(tag: str) -> str:
    """The state table's sort key of a tag: `reference.tag_key`, so never above 128 characters (DynamoDB: 1,024
    bytes). The service already keys names outside the grammar this way; this is the last line of defence, so
    that a save after a successful publish cannot fail on a key a registry made up."""
    return tag_key(tag)


def state_partition_key(image: str) -> str:
    """`registry/repository` as stored; names come from validated references (≤ 255 characters), and anything
    longer than DynamoDB's 2,048-byte partition key limit allows is hashed rather than failing the save."""
    if len(image.encode()) <= MAX_STATE_IMAGE_BYTES:
        return image
    return f"#invalid-image-{hashlib.sha256(image.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}"


def tag_state_to_item(state: TagState) -> Item:
    item: Item = {
        STATE_PARTITION_KEY: {"S": state_partition_key(state.image)},
        STATE_SORT_KEY: {"S": state_sort_key(state.tag)},
        "registry": {"S": state.registry},
        "repository": {"S": state.repository},
        "last_verdict": {"S": state.last_verdict.value},
        "first_seen": {"S": format_timestamp(state.first_seen)},
        "last_seen": {"S": format_timestamp(state.last_seen)},
        "alert_count": {"N": str(state.alert_count)},
        "consecutive_unverifiable": {"N": str(state.consecutive_unverifiable)},
    }
    _put_optional(item, "last_live_digest", str(state.last_live_digest) if state.last_live_digest else None)
    _put_optional(item, "last_alerted", format_timestamp(state.last_alerted) if state.last_alerted else None)
    _put_optional(item, "alerted_verdict", state.alerted_verdict.value if state.alerted_verdict else None)
    _put_optional(item, "alerted_digest", str(state.alerted_digest) if state.alerted_digest else None)
    # A package file's announced yank; "" (a yank without a reason) is stored too, None is not.
    _put_optional(item, "yank_notified", state.yank_notified)
    _put_optional(item, "yank_notice_at", format_timestamp(state.yank_notice_at) if state.yank_notice_at else None)
    return item


def tag_state_from_item(
    item: Mapping[str, AttributeValueTypeDef], *, table: str = "?", names: dict[str, str] | None = None
) -> TagState:
    """Inverse of `tag_state_to_item`; `names` as in `trusted_image_from_item`."""
    names = {} if names is None else names
    try:
        fields: dict[str, object] = {
            "registry": _shared(names, _required_text(item, "registry")),
            "repository": _shared(names, _required_text(item, "repository")),
            "tag": _required_text(item, STATE_SORT_KEY),
            "last_verdict": _required_text(item, "last_verdict"),
            "last_live_digest": _text(item, "last_live_digest"),
            "first_seen": _required_text(item, "first_seen"),
            "last_seen": _required_text(item, "last_seen"),
            "last_alerted": _text(item, "last_alerted"),
            "alert_count": _number(item, "alert_count") or 0,
            "consecutive_unverifiable": _number(item, "consecutive_unverifiable") or 0,
            "alerted_verdict": _text(item, "alerted_verdict"),
            "alerted_digest": _text(item, "alerted_digest"),
            "yank_notified": _text(item, "yank_notified"),  # absent from items written before yank notices
            "yank_notice_at": _text(item, "yank_notice_at"),
        }
        return _validated(TagState, fields)
    except _MalformedItemError as exc:
        raise _malformed(exc, item, table, STATE_SORT_KEY) from None


# --- paginated reads ---------------------------------------------------------------------------------------


def _scan_pages(client: DynamoDBClient, request: ScanInputTypeDef) -> Iterator[Item]:
    """Every item of a Scan, following LastEvaluatedKey (a page ends at 1 MB or at `Limit`)."""
    while True:
        page = client.scan(**request)
        yield from page.get("Items", [])
        last_key = page.get("LastEvaluatedKey")
        if not last_key:
            return
        request = {**request, "ExclusiveStartKey": last_key}


def _query_pages(client: DynamoDBClient, request: QueryInputTypeDef) -> Iterator[Item]:
    while True:
        page = client.query(**request)
        yield from page.get("Items", [])
        last_key = page.get("LastEvaluatedKey")
        if not last_key:
            return
        request = {**request, "ExclusiveStartKey": last_key}


# --- the stores --------------------------------------------------------------------------------------------


class DynamoTrustStore:
    """ports.TrustReader and ports.TrustRecorder on the trust table. `page_size` caps items per Scan/Query
    page (for tests).

    `scan_segments`: the snapshot Scan is split into this many segments read in parallel (DynamoDB's parallel
    Scan); a table of one page costs that many Scan calls instead of one, for the same read capacity.
    """

    def __init__(
        self,
        table_name: str,
        client: DynamoDBClient,
        *,
        page_size: int | None = None,
        scan_segments: int = SCAN_SEGMENTS,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if scan_segments < 1:
            raise ValueError("scan_segments must be at least 1")
        self.table_name = table_name
        self._client = client
        self._page_size = page_size
        self._scan_segments = scan_segments
        self._clock = clock

    def _call(self, operation: str) -> AbstractContextManager[None]:
        return _translated(self.table_name, operation, ENV_TRUST_TABLE)

    def _scan(self, filter_expression: str, values: Mapping[str, AttributeValueTypeDef]) -> list[Item]:
        request: ScanInputTypeDef = {
            "TableName": self.table_name,
            "FilterExpression": filter_expression,
            "ExpressionAttributeNames": {"#sk": TRUST_SORT_KEY},
            "ExpressionAttributeValues": values,
        }
        if self._page_size is not None:
            request["Limit"] = self._page_size
        with self._call("Scan"):
            return list(_scan_pages(self._client, request))

    def _query(self, request: QueryInputTypeDef) -> list[Item]:
        if self._page_size is not None:
            request["Limit"] = self._page_size
        with self._call("Query"):
            return list(_query_pages(self._client, request))

    def _get_item(self, image: str, sort_key: str, *, consistent: bool) -> Item | None:
        with self._call("GetItem"):
            response = self._client.get_item(
                TableName=self.table_name,
                Key={TRUST_PARTITION_KEY: {"S": image}, TRUST_SORT_KEY: {"S": sort_key}},
                ConsistentRead=consistent,
            )
        return response.get("Item") or None

    def load_all(self) -> list[TrustedImage]:
        items = self._scan("begins_with(#sk, :prefix)", {":prefix": {"S": CURRENT_PREFIX}})
        records = [trusted_image_from_item(item, table=self.table_name) for item in items]
        return sorted(records, key=lambda record: (record.image, record.tag))

    def get(self, image: str, tag: str, *, consistent: bool = False) -> TrustedImage | None:
        item = self._get_item(image, current_sort_key(tag), consistent=consistent)
        return trusted_image_from_item(item, table=self.table_name) if item is not None else None

    def history(self, image: str, tag: str) -> list[TrustedImage]:
        items = self._query(
            {
                "TableName": self.table_name,
                "KeyConditionExpression": "#image = :image AND begins_with(#sk, :prefix)",
                "ExpressionAttributeNames": _TRUST_NAMES,
                "ExpressionAttributeValues": {":image": {"S": image}, ":prefix": {"S": history_prefix(tag)}},
                "ConsistentRead": True,
                "ScanIndexForward": True,
            }
        )
        return [trusted_image_from_item(item, table=self.table_name) for item in items]

    def digests_ever_recorded(self, image: str) -> set[Digest]:
        # Consistent: a moving tag that CI has just advanced must not look like drift to the auditor.
        items = self._query(
            {
                "TableName": self.table_name,
                "KeyConditionExpression": "#image = :image",
                "ProjectionExpression": "#sk, #digest",
                "ExpressionAttributeNames": {**_TRUST_NAMES, "#digest": "digest"},
                "ExpressionAttributeValues": {":image": {"S": image}},
                "ConsistentRead": True,
            }
        )
        digests: set[Digest] = set()
        for item in items:
            try:
                text = _text(item, "digest")
                if text is not None:  # the watch-settings item has no digest
                    digests.add(Digest.parse(text))
            except _MalformedItemError as exc:
                raise _malformed(exc, item, self.table_name, TRUST_SORT_KEY) from None
            except AuditError as exc:
                raise _malformed(_MalformedItemError(exc.message), item, self.table_name, TRUST_SORT_KEY) from None
        return digests

    def record(self, item: TrustedImage, *, replace: bool = False, moving: bool = False) -> RecordOutcome:
        """Perform the write `decide_record` asks for, conditional on the record it was decided against."""
        check_record_request(item, replace=replace)  # a usage error before the table is read
        current_item = self._get_item(item.image, current_sort_key(item.tag), consistent=True)
        current = trusted_image_from_item(current_item, table=self.table_name) if current_item is not None else None
        decision = decide_record(current, item, replace=replace, moving=moving)
        if decision.outcome is RecordOutcome.UNCHANGED:
            return decision.outcome
        if decision.superseded is None or current_item is None:  # CREATED: put only if still absent
            if self._put_new(item):
                return decision.outcome
            # Another recorder created the tag between our read and our write: judge against what it wrote.
            winner = self.get(item.image, item.tag, consistent=True)
            if winner is None:
                raise concurrent_change_error(item, expected=None, now=None)
            # The same digest is UNCHANGED, another one of a pinned tag raises the conflict; a replace or move
            # of a record we have not seen is not attempted.
            if decide_record(winner, item, replace=replace, moving=moving).outcome is RecordOutcome.UNCHANGED:
                return RecordOutcome.UNCHANGED
            raise concurrent_change_error(item, expected=None, now=winner.digest)
        # REPLACED or APPENDED: the superseded record goes to history, only if the tag is still as we read it.
        if not self._supersede(current_item, decision.superseded, item):
            raise concurrent_change_error(item, expected=decision.superseded.digest, now=None)
        return decision.outcome

    def _put_new(self, item: TrustedImage) -> bool:
        """Put the first record of a tag; False when the tag appeared meanwhile."""
        new_item = trusted_image_to_item(item)
        new_item["revision"] = {"N": "1"}
        with self._call("PutItem"):
            try:
                self._client.put_item(
                    TableName=self.table_name,
                    Item=new_item,
                    ConditionExpression="attribute_not_exists(#sk)",
                    ExpressionAttributeNames={"#sk": TRUST_SORT_KEY},
                )
            except ClientError as exc:
                if _error_code(exc) == "ConditionalCheckFailedException":
                    return False
                raise
        return True

    def _supersede(self, current_item: Item, current: TrustedImage, item: TrustedImage) -> bool:
        """Move the current record to history and put the new one atomically; False if the tag changed."""
        superseded_at = self._clock()
        revision = _number(current_item, "revision")
        history_item: Item = {
            **current_item,
            TRUST_SORT_KEY: {"S": history_sort_key(item.tag, superseded_at, current.digest)},
            "superseded_at": {"S": format_timestamp(superseded_at)},
            "superseded_by": {"S": str(item.digest)},
        }
        new_item = trusted_image_to_item(item)
        new_item["revision"] = {"N": str((revision or 0) + 1)}
        values: dict[str, AttributeValueTypeDef] = {":old_digest": {"S": str(current.digest)}}
        if revision is None:  # an item written by hand or by another tool: the digest alone must still match
            condition = "#digest = :old_digest AND attribute_not_exists(#revision)"
        else:
            condition = "#digest = :old_digest AND #revision = :revision"
            values[":revision"] = {"N": str(revision)}
        with self._call("TransactWriteItems"):
            try:
                self._client.transact_write_items(
                    ClientRequestToken=uuid.uuid4().hex,
                    TransactItems=[
                        {
                            "Put": {
                                "TableName": self.table_name,
                                "Item": history_item,
                                "ConditionExpression": "attribute_not_exists(#sk)",
                                "ExpressionAttributeNames": {"#sk": TRUST_SORT_KEY},
                            }
                        },
                        {
                            "Put": {
                                "TableName": self.table_name,
                                "Item": new_item,
                                "ConditionExpression": condition,
                                "ExpressionAttributeNames": {"#digest": "digest", "#revision": "revision"},
                                "ExpressionAttributeValues": values,
                            }
                        },
                    ],
                )
            except ClientError as exc:
                if _error_code(exc) == "TransactionCanceledException" and _lost_race(exc):
                    # A retry of our own write whose response was lost finds the record it wrote itself.
                    return self._get_item(item.image, current_sort_key(item.tag), consistent=True) == new_item
                raise
        return True

    def load_watch_settings(self) -> list[WatchSettings]:
        items = self._scan("#sk = :watch", {":watch": {"S": WATCH_SORT_KEY}})
        settings = [watch_settings_from_item(item, table=self.table_name) for item in items]
        return sorted(settings, key=lambda entry: entry.image)

    def load_snapshot(self) -> TrustSnapshot:
        """One Scan for both: a filter does not lower the read cost, a second pass over the table would double it.

        Watch items are written by `watch`/`trust import` (validated) but can be edited by hand: an invalid one
        is returned as rejected rather than failing the whole audit.
        """
        records: list[TrustedImage] = []
        settings: list[WatchSettings] = []
        rejected: list[RejectedWatch] = []
        for page in self.snapshot_pages():
            records += page.trusted
            settings += page.watch
            rejected += page.rejected_watch
        records.sort(key=lambda record: (record.image, record.tag))
        settings.sort(key=lambda entry: entry.image)
        return TrustSnapshot(records, settings, rejected)

    def snapshot_pages(self) -> Iterator[TrustSnapshot]:
        """The snapshot a Scan page at a time, as pages arrive from `scan_segments` parallel Scan segments.

        A page is at most SNAPSHOT_PAGE_ITEMS items; a table beyond one page is read by the segments at once,
        and the caller starts work on each page while the others are still being read. Segments wait while the
        caller is behind: at most READ_AHEAD_PAGES pages wait for it beyond the one each segment holds.
        """
        request: ScanInputTypeDef = {
            "TableName": self.table_name,
            "FilterExpression": "begins_with(#sk, :prefix) OR #sk = :watch",
            "ExpressionAttributeNames": {"#sk": TRUST_SORT_KEY},
            "ExpressionAttributeValues": {":prefix": {"S": CURRENT_PREFIX}, ":watch": {"S": WATCH_SORT_KEY}},
        }
        # Pages of at most SNAPSHOT_PAGE_ITEMS: the segments' raw pages are in memory at once (see
        # READ_AHEAD_PAGES), and a smaller first page reaches the checks sooner.
        request["Limit"] = min(self._page_size or SNAPSHOT_PAGE_ITEMS, SNAPSHOT_PAGE_ITEMS)
        names: dict[str, str] = {}
        for items in self._parallel_scan(request):
            records: list[TrustedImage] = []
            settings: list[WatchSettings] = []
            rejected: list[RejectedWatch] = []
            for item in items:
                if item[TRUST_SORT_KEY] == {"S": WATCH_SORT_KEY}:
                    try:
                        settings.append(watch_settings_from_item(item, table=self.table_name))
                    except StoreError as exc:
                        image = printable(_text(item, TRUST_PARTITION_KEY) or "?", max_chars=300)
                        rejected.append(RejectedWatch(image, printable(exc.message, max_chars=600)))
                else:
                    records.append(trusted_image_from_item(item, table=self.table_name, names=names))
            yield TrustSnapshot(records, settings, rejected)

    def _parallel_scan(self, request: ScanInputTypeDef) -> Iterator[list[Item]]:
        segments = self._scan_segments
        if segments == 1:
            with self._call("Scan"):
                page_request = request
                while True:
                    page = self._client.scan(**page_request)
                    yield page.get("Items", [])
                    last_key = page.get("LastEvaluatedKey")
                    if not last_key:
                        return
                    page_request = {**page_request, "ExclusiveStartKey": last_key}
        arrived: queue.Queue[list[Item] | BaseException | None] = queue.Queue(maxsize=READ_AHEAD_PAGES)
        stop = threading.Event()

        def hand_over(entry: list[Item] | BaseException | None) -> bool:
            """Wait until the reader takes `entry`; False if it stopped reading meanwhile."""
            while not stop.is_set():
                try:
                    arrived.put(entry, timeout=_HAND_OVER_POLL_S)
                except queue.Full:
                    continue
                return True
            return False

        def scan_segment(segment: int) -> None:
            try:
                segment_request: ScanInputTypeDef = {**request, "Segment": segment, "TotalSegments": segments}
                with self._call("Scan"):
                    while not stop.is_set():
                        page = self._client.scan(**segment_request)
                        if not hand_over(page.get("Items", [])):
                            return
                        last_key = page.get("LastEvaluatedKey")
                        if not last_key:
                            break
                        segment_request = {**segment_request, "ExclusiveStartKey": last_key}
            except BaseException as exc:  # handed to the reading thread, which raises it
                hand_over(exc)
            else:
                hand_over(None)

        threads = [threading.Thread(target=scan_segment, args=(n,), daemon=True) for n in range(segments)]
        for thread in threads:
            thread.start()
        try:
            finished = 0
            while finished < segments:
                entry = arrived.get()
                if entry is None:
                    finished += 1
                elif isinstance(entry, BaseException):
                    raise entry
                else:
                    yield entry
        finally:
            stop.set()  # a reader that stopped early (or failed) ends the other segments after their page

    def get_watch_settings(self, image: str) -> WatchSettings | None:
        item = self._get_item(image, WATCH_SORT_KEY, consistent=True)
        return watch_settings_from_item(item, table=self.table_name) if item is not None else None

    def put_watch_settings(self, settings: WatchSettings) -> None:
        with self._call("PutItem"):
            self._client.put_item(TableName=self.table_name, Item=watch_settings_to_item(settings))


class DynamoStateStore:
    """ports.StateStore on the state table; `save` batches writes and retries throttled items (bounded)."""

    def __init__(
        self,
        table_name: str,
        client: DynamoDBClient,
        *,
        page_size: int | None = None,
        max_attempts: int = 6,
        backoff: Callable[[int], float] = lambda retry: min(0.05 * 2 ** (retry - 1), 2.0),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`backoff(n)`: seconds to wait before the n-th retry of unprocessed items (bootstrap passes the
        clients' retry policy, so a throttled save backs off like botocore's own retries)."""
        self.table_name = table_name
        self._client = client
        self._page_size = page_size
        self._max_attempts = max(1, max_attempts)
        self._backoff = backoff
        self._sleep = sleep

    def _call(self, operation: str) -> AbstractContextManager[None]:
        return _translated(self.table_name, operation, ENV_STATE_TABLE)

    def load_all(self) -> dict[tuple[str, str], TagState]:
        request: ScanInputTypeDef = {"TableName": self.table_name}
        # Small pages, converted as they come: the raw items of one page are the only transient copy.
        request["Limit"] = min(self._page_size or SNAPSHOT_PAGE_ITEMS, SNAPSHOT_PAGE_ITEMS)
        states: dict[tuple[str, str], TagState] = {}
        names: dict[str, str] = {}
        with self._call("Scan"):
            for item in _scan_pages(self._client, request):  # converted as read: one page of raw items at a time
                if item.get(STATE_PARTITION_KEY, {}).get("S", "").startswith(RESERVED_PREFIX):
                    continue  # the run lease, not a tag's state
                state = tag_state_from_item(item, table=self.table_name, names=names)
                states[names.setdefault(state.image, state.image), state.tag] = state
        return states

    def save(self, changed: Sequence[TagState]) -> None:
        # BatchWriteItem rejects two requests for one key in a batch; the last state of a key wins.
        latest = {state.key: state for state in changed}
        # Items are built a batch at a time: a first run's 10,000 at once were its peak of memory (issue 11).
        for batch in itertools.batched(latest.values(), BATCH_LIMIT, strict=False):
            requests: list[WriteRequestTypeDef] = [
                {"PutRequest": {"Item": tag_state_to_item(state)}} for state in batch
            ]
            self._write_batch(requests)

    def _write_batch(self, batch: Sequence[WriteRequestTypeDef | WriteRequestOutputTypeDef]) -> None:
        pending = list(batch)
        for attempt in range(self._max_attempts):
            if attempt:
                # Unprocessed items mean throttling: back off exponentially, capped so a run cannot stall.
                self._sleep(self._backoff(attempt))
            with self._call("BatchWriteItem"):
                response = self._client.batch_write_item(RequestItems={self.table_name: pending})
            unprocessed = response.get("UnprocessedItems", {}).get(self.table_name, [])
            if not unprocessed:
                return
            pending = list(unprocessed)
        raise StoreError(
            f"DynamoDB BatchWriteItem on table {self.table_name!r}: {len(pending)} of {len(batch)} "
            f"state items were still unprocessed after {self._max_attempts} attempts",
            hint="the table is throttled; give it more capacity (or PAY_PER_REQUEST); the next run retries",
        )


class DynamoRunLease:
    """ports.RunLease as the reserved item of the state table: a conditional put takes it when it is free or
    expired, a conditional update renews it, a conditional delete releases it; `owner` is the run id."""

    def __init__(
        self,
        table_name: str,
        client: DynamoDBClient,
        *,
        duration: timedelta,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.table_name = table_name
        self._client = client
        self._duration = duration
        self._clock = clock

    def _call(self, operation: str) -> AbstractContextManager[None]:
        return _translated(self.table_name, operation, ENV_STATE_TABLE)

    def _key(self) -> Item:
        return {name: {"S": value} for name, value in LEASE_KEY.items()}

    def acquire(self, owner: str) -> LeaseClaim:
        now = self._clock()
        expires_at = now + self._duration
        item: Item = {
            **self._key(),
            "owner": {"S": owner},
            "holder": {"S": f"run {owner} on {socket.gethostname()} (pid {os.getpid()})"},
            "acquired_at": {"S": format_timestamp(now)},
            "expires_at": {"N": str(int(expires_at.timestamp()))},
        }
        with self._call("PutItem"):
            try:
                self._client.put_item(
                    TableName=self.table_name,
                    Item=item,
                    ConditionExpression="attribute_not_exists(#image) OR #expires < :now",
                    ExpressionAttributeNames={"#image": STATE_PARTITION_KEY, "#expires": "expires_at"},
                    ExpressionAttributeValues={":now": {"N": str(int(now.timestamp()))}},
                )
            except ClientError as exc:
                if _error_code(exc) != "ConditionalCheckFailedException":
                    raise
                return self._held(owner, expires_at)
        return LeaseClaim(acquired=True, holder=owner, expires_at=expires_at)

    def _held(self, owner: str, expires_at: datetime) -> LeaseClaim:
        with self._call("GetItem"):
            item = self._client.get_item(TableName=self.table_name, Key=self._key(), ConsistentRead=True).get("Item")
        if item is None:  # released between our put and our read: say so rather than guess
            return LeaseClaim(acquired=False, holder="another run (it has just finished)")
        if _text(item, "owner") == owner:  # our put succeeded, its response was lost, botocore's retry failed
            return LeaseClaim(acquired=True, holder=owner, expires_at=expires_at)
        expires = _number(item, "expires_at")
        holder = _text(item, "holder") or _text(item, "owner") or "another run"
        return LeaseClaim(
            acquired=False,
            holder=holder,
            expires_at=datetime.fromtimestamp(expires, UTC) if expires is not None else None,
        )

    def renew(self, owner: str) -> bool:
        expires_at = self._clock() + self._duration
        with self._call("UpdateItem"):
            try:
                self._client.update_item(
                    TableName=self.table_name,
                    Key=self._key(),
                    UpdateExpression="SET #expires = :expires",
                    ConditionExpression="#owner = :owner",
                    ExpressionAttributeNames={"#expires": "expires_at", "#owner": "owner"},
                    ExpressionAttributeValues={
                        ":expires": {"N": str(int(expires_at.timestamp()))},
                        ":owner": {"S": owner},
                    },
                )
            except ClientError as exc:
                if _error_code(exc) == "ConditionalCheckFailedException":
                    return False
                raise
        return True

    def release(self, owner: str) -> None:
        with self._call("DeleteItem"):
            try:
                self._client.delete_item(
                    TableName=self.table_name,
                    Key=self._key(),
                    ConditionExpression="#owner = :owner",
                    ExpressionAttributeNames={"#owner": "owner"},
                    ExpressionAttributeValues={":owner": {"S": owner}},
                )
            except ClientError as exc:
                if _error_code(exc) != "ConditionalCheckFailedException":  # taken over: not ours to delete
                    raise


# --- table creation ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableSetup:
    """The outcome of `create_tables` for one table."""

    name: str
    created: bool  # False: it existed already with the expected key schema


def _key_schema(partition_key: str, sort_key: str) -> list[tuple[str, str]]:
    return [(partition_key, "HASH"), (sort_key, "RANGE")]


def create_tables(client: DynamoDBClient, trust_table: str, state_table: str) -> list[TableSetup]:
    """Create both tables (on-demand, the SAM template's key schema) unless they exist; wait until active."""
    return [
        _create_table(client, trust_table, TRUST_PARTITION_KEY, TRUST_SORT_KEY, ENV_TRUST_TABLE),
        _create_table(client, state_table, STATE_PARTITION_KEY, STATE_SORT_KEY, ENV_STATE_TABLE),
    ]


def _create_table(client: DynamoDBClient, table: str, partition_key: str, sort_key: str, variable: str) -> TableSetup:
    """One table: created with the key schema and waited for, or found existing, checked, and waited for only
    when it is not active yet (an existing active table costs one DescribeTable)."""
    expected = _key_schema(partition_key, sort_key)
    with _translated(table, "CreateTable", variable):
        try:
            client.create_table(
                TableName=table,
                KeySchema=[
                    {"AttributeName": partition_key, "KeyType": "HASH"},
                    {"AttributeName": sort_key, "KeyType": "RANGE"},
                ],
                AttributeDefinitions=[
                    {"AttributeName": partition_key, "AttributeType": "S"},
                    {"AttributeName": sort_key, "AttributeType": "S"},
                ],
                BillingMode="PAY_PER_REQUEST",
            )
        except ClientError as exc:
            if _error_code(exc) != "ResourceInUseException":
                raise
            created = False
        else:
            created = True
    with _translated(table, "DescribeTable", variable):
        if not created:
            description = client.describe_table(TableName=table)["Table"]
            actual = [(key["AttributeName"], key["KeyType"]) for key in description.get("KeySchema", [])]
            if actual != expected:
                shown = ", ".join(f"{name} ({kind})" for name, kind in actual) or "none"
                wanted = ", ".join(f"{name} ({kind})" for name, kind in expected)
                raise StoreError(
                    f"table {table!r} exists with key schema {shown}, not {wanted}",
                    hint=f"it belongs to something else: choose another name in {variable}, or delete that table",
                )
            if description.get("TableStatus") == "ACTIVE":
                return TableSetup(name=table, created=False)
        try:
            client.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
        except WaiterError as exc:
            raise StoreError(
                f"table {table!r} did not become active: {exc}",
                hint=f"check it with `aws dynamodb describe-table --table-name {table}`",
            ) from None
    return TableSetup(name=table, created=created)
