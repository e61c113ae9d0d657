"""Push events in, "check this tag now" out: verification and parsing shared by the Lambda receiver and `listen`.

A registry event is a hint, never evidence: this module only decides whether a request is authentic and well
formed and names the tags to check; the verdict always comes from the registry and the trust table through the
normal engine. Pure: no sockets, no clocks, no stores (the caller passes `now` and the replay port).

Everything here is untrusted input. Names are validated against the reference grammar before they go anywhere,
responses never echo input, and log lines carry escaped values only (never headers, tokens or bodies).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import ValidationError, ValidationInfo, field_validator

from audit.errors import AuditError, InvalidEventError
from audit.models import SCHEMA1_MEDIA_TYPES, Digest, MediaType
from audit.records import Frozen, TrustedImage
from audit.reference import DOCKER_HUB_API_HOST, is_valid_tag, parse_image_name
from audit.untrusted import printable

log = logging.getLogger(__name__)

#: Largest body read from any source; GitHub's package payloads are a few KiB, a distribution envelope of a
#: multi-arch push a few dozen KiB.
MAX_BODY_BYTES = 1024 * 1024
#: Most check requests one delivery may produce (a distribution envelope batches events).
MAX_REQUESTS_PER_DELIVERY = 256
#: Largest queue message accepted by `CheckRequest.from_message` (SQS allows 256 KiB; ours are < 1 KiB).
MAX_MESSAGE_BYTES = 16 * 1024
#: A signed GitHub delivery whose payload time is further from `now` than this is refused as stale.
DEFAULT_MAX_EVENT_AGE = timedelta(hours=1)
MESSAGE_VERSION = 1

_DELIVERY_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_ECR_ACCOUNT_RE = re.compile(r"[0-9]{12}")
_ECR_REGION_RE = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}")

#: Manifest media types a distribution registry announces; everything else (layers, configs) is a blob event.
MANIFEST_MEDIA_TYPES = frozenset({*(media.value for media in MediaType), *SCHEMA1_MEDIA_TYPES})


class HookAction(StrEnum):
    PUSH = "push"
    DELETE = "delete"


class HookSource(StrEnum):
    DISTRIBUTION = "distribution"
    GITHUB = "github"
    DOCKERHUB = "dockerhub"
    ECR = "ecr"


class CheckRequest(Frozen):
    """One "check this tag now" hint: validated names, the event's digest and time for the record only.

    `tag` is None only for a delete by digest (the caller checks the tracked tags that trusted that digest).
    `digest` is what the event claimed, never compared with anything: the registry is asked again.
    """

    registry: str
    repository: str
    tag: str | None
    digest: Digest | None = None
    action: HookAction
    source: HookSource
    event_time: datetime | None = None
    delivery_id: str | None = None

    @field_validator("repository")
    @classmethod
    def _repository_in_grammar(cls, repository: str, info: ValidationInfo) -> str:
        registry = info.data.get("registry")
        if not isinstance(registry, str):
            raise ValueError("the registry is invalid")  # noqa: TRY004 (pydantic reports only ValueError)
        try:
            normalised_registry, normalised = parse_image_name(registry, repository)
        except AuditError as exc:
            raise ValueError(exc.message) from None
        if (normalised_registry, normalised) != (registry, repository):
            raise ValueError("the image name is not normalised")
        return repository

    @field_validator("tag")
    @classmethod
    def _tag_in_grammar(cls, tag: str | None) -> str | None:
        if tag is not None and not is_valid_tag(tag):
            raise ValueError("the tag is outside the tag grammar")
        return tag

    @field_validator("delivery_id")
    @classmethod
    def _delivery_id_in_grammar(cls, delivery_id: str | None) -> str | None:
        if delivery_id is not None and not _DELIVERY_ID_RE.fullmatch(delivery_id):
            raise ValueError("the delivery id is outside [A-Za-z0-9._:-]{1,128}")
        return delivery_id

    @field_validator("event_time")
    @classmethod
    def _aware_time(cls, event_time: datetime | None) -> datetime | None:
        if event_time is not None and event_time.tzinfo is None:
            raise ValueError("the event time has no time zone")
        return event_time

    @property
    def image(self) -> str:
        """`registry/repository`, the key under which the trust table stores tags."""
        return f"{self.registry}/{self.repository}"

    @property
    def key(self) -> tuple[str, str | None]:
        """What requests are coalesced by: one check per tag however many events named it."""
        return (self.image, self.tag)

    @property
    def display(self) -> str:
        """Escaped one-line form for logs."""
        name = self.image + (f":{self.tag}" if self.tag else "") + (f"@{self.digest.short}" if self.digest else "")
        return printable(f"{self.source.value} {self.action.value} {name}")

    def to_message(self) -> str:
        """The queue body: versioned JSON, read back with `from_message`."""
        body = {"v": MESSAGE_VERSION, **self.model_dump(mode="json")}
        return json.dumps(body, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_message(cls, text: str) -> CheckRequest:
        """Parse and validate a queue body; a queue message is untrusted too. Raises InvalidEventError."""
        if len(text.encode("utf-8", errors="replace")) > MAX_MESSAGE_BYTES:
            raise InvalidEventError(f"check request message is larger than {MAX_MESSAGE_BYTES} bytes")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise InvalidEventError("check request message is not JSON") from None
        if not isinstance(data, dict):
            raise InvalidEventError("check request message is not a JSON object")
        version = data.pop("v", None)
        if version != MESSAGE_VERSION:
            raise InvalidEventError(
                f"check request message has version {printable(str(version), max_chars=20)}, "
                f"this auditor reads version {MESSAGE_VERSION}",
                hint="deploy the receiver and the auditor from the same release",
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidEventError(f"invalid check request message: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    """A validation error's location and message, without the offending input (it could be anything)."""
    errors = exc.errors(include_input=False, include_url=False)
    if not errors:
        return "invalid"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return printable(f"{where}: {first.get('msg', 'invalid')}", max_chars=200)


@dataclass(frozen=True)
class HookSecrets:
    """Shared secrets per route; a route whose secret is None is not served (404).

    `webhook_token` guards both the distribution route (`Authorization: Bearer`) and the Docker Hub URL.
    """

    webhook_token: str | None = None
    github_secret: str | None = None

    def __repr__(self) -> str:  # never print a secret by accident
        configured = [name for name in ("webhook_token", "github_secret") if getattr(self, name)]
        return f"HookSecrets(configured={configured})"


#: The replay port: called with a delivery id, returns True when that id was seen before (and remembers it).
SeenDeliveries = Callable[[str], bool]


class MemorySeen:
    """In-process replay guard for `listen` (and a warm Lambda container): bounded, oldest ids forgotten first.

    Ids older than the stale limit need no memory: such a delivery is refused by its time anyway.
    """

    def __init__(self, *, capacity: int = 100_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def __call__(self, delivery_id: str) -> bool:
        if delivery_id in self._ids:
            return True
        self._ids[delivery_id] = None
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return False


_RESPONSE_TEXT = {
    202: "accepted",
    204: "",
    400: "malformed request",
    401: "missing or invalid credentials",
    404: "not found",
    405: "method not allowed",
    411: "length required",
    413: "request body too large",
    431: "request header fields too large",
}


@dataclass(frozen=True)
class HookResult:
    """What to answer and what to enqueue. `reason` is for the operator's log (escaped), never the response."""

    status: int
    requests: list[CheckRequest] = field(default_factory=list)
    reason: str = ""

    @property
    def body(self) -> str:
        """A fixed text per status: nothing from the request is ever reflected."""
        return _RESPONSE_TEXT.get(self.status, "")

    @property
    def allow(self) -> str | None:
        """The `Allow` header of a 405."""
        return "POST" if self.status == 405 else None


class _Reject(Exception):
    """Internal: stop parsing with this status and log reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


_ROUTE_DISTRIBUTION = "/hooks/distribution"
_ROUTE_GITHUB = "/hooks/github"
_ROUTE_DOCKERHUB = "/hooks/dockerhub/"


def receive(
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    secrets: HookSecrets,
    *,
    now: datetime,
    seen: SeenDeliveries,
    aliases: Mapping[str, str] | None = None,
    max_event_age: timedelta = DEFAULT_MAX_EVENT_AGE,
) -> HookResult:
    """Verify one HTTP delivery and turn it into check requests.

    Order: route (404) → method (405) → size (413) → credentials (401) → content (400 / 204 / 202). A route
    whose secret is not configured is 404, so an unconfigured receiver reveals nothing. `aliases` maps a host
    as the distribution registry names itself (`request.host`) to the name the trust table uses for it.
    """
    lower = {name.lower(): value for name, value in headers.items()}
    path = path.split("?", 1)[0]
    try:
        result = _route(
            method, path, lower, body, secrets, now=now, seen=seen, aliases=aliases or {}, age=max_event_age
        )
    except _Reject as reject:
        result = HookResult(reject.status, reason=reject.reason)
    if result.status >= 400:
        log.warning("push event refused (%d): %s", result.status, printable(result.reason))
    elif result.status == 204:
        log.debug("push event ignored: %s", printable(result.reason))
    else:
        for request in result.requests:
            log.info("push event accepted: %s", request.display)
    return result


def _route(
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    secrets: HookSecrets,
    *,
    now: datetime,
    seen: SeenDeliveries,
    aliases: Mapping[str, str],
    age: timedelta,
) -> HookResult:
    if path == _ROUTE_DISTRIBUTION and secrets.webhook_token:
        _check_method_and_size(method, body)
        _check_bearer(headers.get("authorization", ""), secrets.webhook_token)
        return _finish(_distribution_requests(_json(body), aliases), "no manifest push or delete in the envelope")
    if path == _ROUTE_GITHUB and secrets.github_secret:
        _check_method_and_size(method, body)
        _check_signature(headers.get("x-hub-signature-256", ""), body, secrets.github_secret)
        return _github(headers, _json(body), now=now, seen=seen, age=age)
    if path.startswith(_ROUTE_DOCKERHUB) and secrets.webhook_token:
        _check_method_and_size(method, body)
        if not _same_secret(path.removeprefix(_ROUTE_DOCKERHUB), secrets.webhook_token):
            raise _Reject(401, "Docker Hub webhook with a wrong URL token")
        return _finish(_dockerhub_requests(_json(body)), "Docker Hub webhook without a tag")
    raise _Reject(404, "unknown or unconfigured route")


def _finish(requests: list[CheckRequest], ignored_reason: str) -> HookResult:
    if not requests:
        return HookResult(204, reason=ignored_reason)
    return HookResult(202, requests=requests, reason=f"{len(requests)} check request(s)")


def _check_method_and_size(method: str, body: bytes) -> None:
    if method.upper() != "POST":
        raise _Reject(405, "only POST is served")
    if len(body) > MAX_BODY_BYTES:
        raise _Reject(413, f"body of {len(body)} bytes is over the {MAX_BODY_BYTES} byte limit")


def _same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", errors="replace"), expected.encode("utf-8"))


def _check_bearer(authorization: str, token: str) -> None:
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise _Reject(401, "distribution notification without a bearer token")
    if not _same_secret(given.strip(), token):
        raise _Reject(401, "distribution notification with a wrong bearer token")


def _check_signature(header: str, body: bytes, secret: str) -> None:
    if not header.startswith("sha256="):
        raise _Reject(401, "GitHub delivery without X-Hub-Signature-256")
    expected = "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    if not _same_secret(header, expected):
        raise _Reject(401, "GitHub delivery with a wrong signature")


def _json(body: bytes) -> Mapping[str, Any]:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _Reject(400, "body is not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise _Reject(400, "body is not a JSON object")
    return data


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise _Reject(400, f"{what} is missing or not a string")
    return value


def _optional_text(value: object, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _Reject(400, f"{what} is not a string")
    return value


def _request(
    *,
    host: str,
    repository: str,
    tag: str | None,
    digest: str | None,
    action: HookAction,
    source: HookSource,
    event_time: datetime | None,
    delivery_id: str | None,
) -> CheckRequest:
    """Validate every name against the grammar; anything outside it rejects the whole delivery."""
    try:
        registry, normalised = parse_image_name(host.lower(), repository)
    except AuditError as exc:
        raise _Reject(400, exc.message) from None
    if tag is not None and not is_valid_tag(tag):
        raise _Reject(400, f"invalid tag {tag!r}")
    parsed_digest = None
    if digest is not None:
        try:
            parsed_digest = Digest.parse(digest)
        except (AuditError, ValidationError):
            raise _Reject(400, f"invalid digest {digest!r}") from None
    if delivery_id is not None and not _DELIVERY_ID_RE.fullmatch(delivery_id):
        delivery_id = None  # an id is only for correlation; an odd one is dropped, not trusted
    return CheckRequest(
        registry=registry,
        repository=normalised,
        tag=tag,
        digest=parsed_digest,
        action=action,
        source=source,
        event_time=event_time,
        delivery_id=delivery_id,
    )


def _parse_time(value: object) -> datetime | None:
    """RFC 3339 text or epoch seconds; anything else is no time (a time is never required)."""
    try:
        if isinstance(value, bool):
            return None
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str) and 0 < len(value) <= 64:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


# --- CNCF distribution ("Work with notifications") -------------------------------------------------------------


def _distribution_requests(envelope: Mapping[str, Any], aliases: Mapping[str, str]) -> list[CheckRequest]:
    events = envelope.get("events")
    if not isinstance(events, list):
        raise _Reject(400, "distribution envelope without an events list")
    if len(events) > MAX_REQUESTS_PER_DELIVERY:
        raise _Reject(400, f"distribution envelope with {len(events)} events (limit {MAX_REQUESTS_PER_DELIVERY})")
    requests: list[CheckRequest] = []
    for event in events:
        if not isinstance(event, dict):
            raise _Reject(400, "distribution event is not an object")
        request = _distribution_event(event, aliases)
        if request is not None:
            requests.append(request)
    return requests


def _distribution_event(event: Mapping[str, Any], aliases: Mapping[str, str]) -> CheckRequest | None:
    action = event.get("action")
    if action not in ("push", "delete"):
        return None  # pulls and mounts say nothing about what a tag serves
    target = event.get("target")
    request = event.get("request")
    if not isinstance(target, dict) or not isinstance(request, dict):
        raise _Reject(400, "distribution event without target or request")
    media_type = target.get("mediaType")
    tag = _optional_text(target.get("tag"), "target.tag")
    digest = _optional_text(target.get("digest"), "target.digest")
    if action == "push" and (media_type not in MANIFEST_MEDIA_TYPES or tag is None):
        return None  # a blob, or a manifest pushed by digest (an index's child): no tag to check
    if action == "delete" and tag is None and digest is None:
        return None
    if action == "delete" and media_type is not None and media_type not in MANIFEST_MEDIA_TYPES:
        return None  # a blob delete
    host = _text(request.get("host"), "request.host")
    host = aliases.get(host.lower(), host)
    return _request(
        host=host,
        repository=_text(target.get("repository"), "target.repository"),
        tag=tag,
        digest=digest,
        action=HookAction(action),
        source=HookSource.DISTRIBUTION,
        event_time=_parse_time(event.get("timestamp")),
        delivery_id=_optional_text(event.get("id"), "id"),
    )


# --- GitHub Packages (GHCR) -------------------------------------------------------------------------------------

_GITHUB_EVENTS = frozenset({"package", "registry_package"})
_GITHUB_ACTIONS = frozenset({"published", "updated"})
_CLOCK_SKEW = timedelta(minutes=5)


def _github(
    headers: Mapping[str, str],
    payload: Mapping[str, Any],
    *,
    now: datetime,
    seen: SeenDeliveries,
    age: timedelta,
) -> HookResult:
    event = headers.get("x-github-event", "")
    if event not in _GITHUB_EVENTS:
        return HookResult(204, reason=f"GitHub event {event!r} is not a package event")
    delivery = headers.get("x-github-delivery", "")
    if not _DELIVERY_ID_RE.fullmatch(delivery):
        raise _Reject(400, "GitHub delivery without a valid X-GitHub-Delivery id")
    package = payload.get(event)
    if not isinstance(package, dict):
        raise _Reject(400, f"GitHub {event} payload without the {event} object")
    version = package.get("package_version")
    version = version if isinstance(version, dict) else {}
    event_time = _parse_time(version.get("updated_at")) or _parse_time(package.get("updated_at"))
    if event_time is not None and not (now - age <= event_time <= now + _CLOCK_SKEW):
        raise _Reject(401, f"stale GitHub delivery {delivery} (payload time {event_time.isoformat()})")
    if payload.get("action") not in _GITHUB_ACTIONS:
        return HookResult(204, reason="GitHub package action is not published or updated")
    if str(package.get("package_type", "")).lower() != "container":
        return HookResult(204, reason="GitHub package is not a container")
    metadata = version.get("container_metadata")
    tag_info = metadata.get("tag") if isinstance(metadata, dict) else None
    tag_info = tag_info if isinstance(tag_info, dict) else {}
    tag = _optional_text(tag_info.get("name"), "container_metadata.tag.name")
    if tag is None:
        return HookResult(204, reason="GitHub container version without a tag")
    namespace = package.get("namespace")
    if not isinstance(namespace, str):
        owner = package.get("owner")
        namespace = owner.get("login") if isinstance(owner, dict) else None
    repository = f"{_text(namespace, 'package.namespace').lower()}/{_text(package.get('name'), 'package.name').lower()}"
    request = _request(
        host="ghcr.io",
        repository=repository,
        tag=tag,
        digest=_optional_text(tag_info.get("digest"), "container_metadata.tag.digest"),
        action=HookAction.PUSH,
        source=HookSource.GITHUB,
        event_time=event_time,
        delivery_id=delivery,
    )
    # Only a delivery that is valid in every other respect is remembered, so a malformed one cannot burn an id.
    if seen(delivery):
        return HookResult(204, reason=f"GitHub delivery {delivery} was already received (replay)")
    return HookResult(202, requests=[request], reason="1 check request")


# --- Docker Hub -------------------------------------------------------------------------------------------------


def _dockerhub_requests(payload: Mapping[str, Any]) -> list[CheckRequest]:
    # No signature and no digest: the secret URL is the only credential, and the event only names a tag.
    # `callback_url` is never called (it would let anyone who knows the URL make us fetch any address).
    repository = payload.get("repository")
    push_data = payload.get("push_data")
    if not isinstance(repository, dict) or not isinstance(push_data, dict):
        raise _Reject(400, "Docker Hub webhook without repository or push_data")
    tag = _optional_text(push_data.get("tag"), "push_data.tag")
    if tag is None:
        return []
    return [
        _request(
            host=DOCKER_HUB_API_HOST,
            repository=_text(repository.get("repo_name"), "repository.repo_name"),
            tag=tag,
            digest=None,
            action=HookAction.PUSH,
            source=HookSource.DOCKERHUB,
            event_time=_parse_time(push_data.get("pushed_at")),
            delivery_id=None,
        )
    ]


# --- Amazon ECR via EventBridge ---------------------------------------------------------------------------------


def from_ecr_event(event: Mapping[str, Any]) -> CheckRequest | None:
    """An EventBridge `aws.ecr` "ECR Image Action" event as a check request.

    None for events that name nothing to check (another source or type, a failed action, a push by digest).
    Raises InvalidEventError when an event of the right type carries names outside the grammar.
    """
    if event.get("source") != "aws.ecr" or event.get("detail-type") != "ECR Image Action":
        return None
    detail = event.get("detail")
    if not isinstance(detail, dict) or detail.get("result") != "SUCCESS":
        return None
    action = {"PUSH": HookAction.PUSH, "DELETE": HookAction.DELETE}.get(str(detail.get("action-type")))
    if action is None:
        return None
    try:
        return _ecr_request(event, detail, action)
    except _Reject as reject:
        raise InvalidEventError(f"invalid ECR event: {printable(reject.reason, max_chars=300)}") from None


def _ecr_request(event: Mapping[str, Any], detail: Mapping[str, Any], action: HookAction) -> CheckRequest | None:
    account = _text(event.get("account"), "account")
    region = _text(event.get("region"), "region")
    if not _ECR_ACCOUNT_RE.fullmatch(account) or not _ECR_REGION_RE.fullmatch(region):
        raise _Reject(400, "ECR event with an invalid account or region")
    tag = _optional_text(detail.get("image-tag"), "detail.image-tag")
    digest = _optional_text(detail.get("image-digest"), "detail.image-digest")
    if tag is None and (action is HookAction.PUSH or digest is None):
        return None
    return _request(
        host=f"{account}.dkr.ecr.{region}.amazonaws.com",
        repository=_text(detail.get("repository-name"), "detail.repository-name"),
        tag=tag,
        digest=digest,
        action=action,
        source=HookSource.ECR,
        event_time=_parse_time(event.get("time")),
        delivery_id=_optional_text(event.get("id"), "id"),
    )


def tags_to_check(
    requests: Sequence[CheckRequest], load_trusted: Callable[[], Iterable[TrustedImage]]
) -> frozenset[tuple[str, str]]:
    """The (image, tag) pairs a batch of requests asks to check, for `RunOptions(tags=...)`.

    A delete by digest names no tag: it concerns every recorded tag of that repository that trusted the digest
    (`load_trusted` is only called when such a request is in the batch).
    """
    tags: set[tuple[str, str]] = set()
    by_digest = [request for request in requests if request.tag is None]
    for request in requests:
        if request.tag is not None:
            tags.add((request.image, request.tag))
    if by_digest:
        wanted = {(request.image, request.digest) for request in by_digest if request.digest is not None}
        tags.update((item.image, item.tag) for item in load_trusted() if (item.image, item.digest) in wanted)
    return frozenset(tags)


def describe(requests: Sequence[CheckRequest]) -> str:
    """Escaped one-line summary of requests for logs."""
    return ", ".join(request.display for request in requests)
