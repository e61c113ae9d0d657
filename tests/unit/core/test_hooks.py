"""The push-event receiver core: routes, credentials, parsing, replay and size limits, queue messages."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.errors import InvalidEventError
from audit.hooks import (
    MAX_BODY_BYTES,
    CheckRequest,
    HookAction,
    HookResult,
    HookSecrets,
    HookSource,
    MemorySeen,
    from_ecr_event,
    receive,
)
from audit.models import Digest

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
TOKEN = "t0ken-" + "x" * 40
GH_SECRET = "documented-test-secret"
SECRETS = HookSecrets(webhook_token=TOKEN, github_secret=GH_SECRET)
DIGEST = "sha256:" + "a" * 64
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def call(
    path: str,
    body: bytes | dict[str, Any],
    headers: dict[str, str] | None = None,
    *,
    method: str = "POST",
    secrets: HookSecrets = SECRETS,
    seen: MemorySeen | None = None,
    aliases: dict[str, str] | None = None,
) -> HookResult:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return receive(method, path, headers or {}, raw, secrets, now=NOW, seen=seen or MemorySeen(), aliases=aliases)


def event(
    action: str = "push", *, tag: str | None = "1.0", media_type: str | None = MANIFEST, **target: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"mediaType": media_type, "digest": DIGEST, "repository": "team/app", "size": 10}
    if tag is not None:
        body["tag"] = tag
    body.update(target)
    return {
        "id": "6b2d1a7e-1c4c-4a0e-9d5b-1f0e5c3b2a10",
        "timestamp": "2026-11-28T11:59:58.123456789Z",
        "action": action,
        "target": body,
        "request": {"host": "127.0.0.1:5000", "method": "PUT"},
    }


def distribution(*events: dict[str, Any], token: str = TOKEN, **kwargs: Any) -> HookResult:
    return call("/hooks/distribution", {"events": list(events)}, {"Authorization": f"Bearer {token}"}, **kwargs)


def test_distribution_manifest_push_is_a_check_request() -> None:
    result = distribution(event())
    assert result.status == 202
    (request,) = result.requests
    assert request.image == "127.0.0.1:5000/team/app"
    assert (request.tag, request.digest, request.action, request.source) == (
        "1.0",
        Digest.parse(DIGEST),
        HookAction.PUSH,
        HookSource.DISTRIBUTION,
    )
    assert request.event_time is not None and request.event_time.tzinfo is not None
    assert request.delivery_id == "6b2d1a7e-1c4c-4a0e-9d5b-1f0e5c3b2a10"


@pytest.mark.parametrize(
    "ignored",
    [
        event(media_type="application/vnd.oci.image.layer.v1.tar+gzip", tag=None),  # blob push
        event(media_type="application/octet-stream"),
        event(tag=None),  # manifest pushed by digest (a child of an index)
        event("pull"),
        event("mount"),
        event("delete", tag=None, digest=None),
    ],
)
def test_distribution_events_that_name_no_tag_change_are_ignored(ignored: dict[str, Any]) -> None:
    result = distribution(ignored)
    assert (result.status, result.requests) == (204, [])


def test_distribution_delete_by_tag_and_by_digest() -> None:
    by_tag, by_digest = distribution(
        event("delete", media_type=None), event("delete", tag=None, media_type=None)
    ).requests
    assert (by_tag.action, by_tag.tag) == (HookAction.DELETE, "1.0")
    assert (by_digest.action, by_digest.tag, str(by_digest.digest)) == (HookAction.DELETE, None, DIGEST)


def test_distribution_mixed_envelope_keeps_only_manifest_pushes() -> None:
    result = distribution(event(media_type="application/octet-stream", tag=None), event("pull"), event(tag="2.0"))
    assert result.status == 202
    assert [r.tag for r in result.requests] == ["2.0"]


@pytest.mark.parametrize(
    ("host", "aliases", "image"),
    [
        ("127.0.0.1:5000", None, "127.0.0.1:5000/team/app"),
        ("Registry.Example.COM", None, "registry.example.com/team/app"),
        ("docker.io", None, "registry-1.docker.io/team/app"),
        ("index.docker.io", None, "registry-1.docker.io/team/app"),
        ("localhost:5000", {"localhost:5000": "registry.example.com"}, "registry.example.com/team/app"),
    ],
)
def test_distribution_request_host_names_the_registry_like_the_trust_table(
    host: str, aliases: dict[str, str] | None, image: str
) -> None:
    body = event()
    body["request"]["host"] = host
    (request,) = distribution(body, aliases=aliases).requests
    assert request.image == image


def test_distribution_docker_hub_official_image_gets_library() -> None:
    body = event(repository="nginx")
    body["request"]["host"] = "docker.io"
    (request,) = distribution(body).requests
    assert request.image == "registry-1.docker.io/library/nginx"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ],
)
def test_distribution_without_the_right_bearer_token_is_401(headers: dict[str, str]) -> None:
    result = call("/hooks/distribution", {"events": [event()]}, headers)
    assert (result.status, result.requests) == (401, [])


def test_header_names_are_case_insensitive() -> None:
    assert call("/hooks/distribution", {"events": [event()]}, {"authorization": f"Bearer {TOKEN}"}).status == 202


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ({"tag": "1.0\x1b[31m"}, "control characters in a tag"),
        ({"tag": "1.0\n"}, "newline after a tag"),
        ({"tag": "-rc"}, "tag starting with '-'"),
        ({"tag": "x" * 129}, "tag too long"),
        ({"repository": "Team/App"}, "uppercase repository"),
        ({"repository": "team/../app"}, "path traversal"),
        ({"repository": "team/app?x=1"}, "query in a repository"),
        ({"digest": "sha256:zz"}, "bad digest"),
        ({"tag": 12}, "tag not a string"),
    ],
)
def test_distribution_names_outside_the_grammar_are_400_and_nothing_is_enqueued(
    target: dict[str, Any], why: str
) -> None:
    result = distribution(event(tag="ok"), event(**target))
    assert (result.status, result.requests) == (400, []), why


def test_distribution_host_outside_the_grammar_is_400() -> None:
    body = event()
    body["request"]["host"] = "evil.example/../x"
    assert distribution(body).status == 400


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", b"\xff\xfe", b'{"events": {}}', b'{"events": [1]}', b"[" * 100_000 + b"]" * 100_000],
)
def test_malformed_bodies_are_400(body: bytes) -> None:
    assert call("/hooks/distribution", body, {"Authorization": f"Bearer {TOKEN}"}).status == 400


def test_too_many_events_are_400() -> None:
    assert distribution(*[event()] * 1000).status == 400


def test_huge_body_is_413_before_credentials_or_parsing() -> None:
    huge = b"{" + b" " * MAX_BODY_BYTES + b"}"
    assert call("/hooks/distribution", huge).status == 413
    assert call("/hooks/distribution", huge, {"Authorization": f"Bearer {TOKEN}"}).status == 413


@pytest.mark.parametrize(
    ("method", "path", "secrets", "status"),
    [
        ("POST", "/hooks/unknown", SECRETS, 404),
        ("POST", "/", SECRETS, 404),
        ("POST", "/hooks/distribution", HookSecrets(github_secret=GH_SECRET), 404),
        ("POST", "/hooks/github", HookSecrets(webhook_token=TOKEN), 404),
        ("POST", f"/hooks/dockerhub/{TOKEN}", HookSecrets(github_secret=GH_SECRET), 404),
        ("GET", "/hooks/distribution", SECRETS, 405),
        ("PUT", "/hooks/github", SECRETS, 405),
    ],
)
def test_routes(method: str, path: str, secrets: HookSecrets, status: int) -> None:
    result = call(path, {"events": []}, {"Authorization": f"Bearer {TOKEN}"}, method=method, secrets=secrets)
    assert result.status == status
    assert result.allow == ("POST" if status == 405 else None)


# --- GitHub -----------------------------------------------------------------------------------------------------


def github_payload(
    *, tag: str | None = "1.4.0", updated_at: str | None = "2026-11-28T11:59:50Z", **package: Any
) -> dict[str, Any]:
    version: dict[str, Any] = {
        "id": 1,
        "version": DIGEST,
        "container_metadata": {"tag": {"name": tag, "digest": DIGEST}},
    }
    if updated_at is not None:
        version["updated_at"] = updated_at
    body = {
        "name": "App",
        "namespace": "Org",
        "package_type": "CONTAINER",
        "owner": {"login": "Org"},
        "package_version": version,
    }
    body.update(package)
    return {"action": "published", "registry_package": body}


def signed(
    payload: dict[str, Any] | bytes,
    *,
    secret: str = GH_SECRET,
    delivery: str = "d-1",
    event_name: str = "registry_package",
) -> tuple[bytes, dict[str, str]]:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return raw, {"X-Hub-Signature-256": signature, "X-GitHub-Delivery": delivery, "X-GitHub-Event": event_name}


def test_github_signed_package_published_is_a_check_request() -> None:
    raw, headers = signed(github_payload())
    result = call("/hooks/github", raw, headers)
    assert result.status == 202
    (request,) = result.requests
    assert (request.image, request.tag, str(request.digest)) == ("ghcr.io/org/app", "1.4.0", DIGEST)
    assert (request.source, request.delivery_id) == (HookSource.GITHUB, "d-1")


def test_github_package_event_spelling_is_accepted_too() -> None:
    payload = github_payload()
    raw, headers = signed({"action": "updated", "package": payload["registry_package"]}, event_name="package")
    assert call("/hooks/github", raw, headers).status == 202


@pytest.mark.parametrize(
    "tamper",
    [
        lambda raw, h: (raw, {k: v for k, v in h.items() if k != "X-Hub-Signature-256"}),
        lambda raw, h: (raw, {**h, "X-Hub-Signature-256": "sha256=" + "0" * 64}),
        lambda raw, h: (raw, {**h, "X-Hub-Signature-256": h["X-Hub-Signature-256"].replace("sha256=", "sha1=")}),
        lambda raw, h: (raw + b" ", h),  # body changed after signing
        lambda raw, h: (raw, signed(raw, secret="other secret")[1]),
    ],
)
def test_github_unsigned_or_wrongly_signed_is_401(tamper: Any) -> None:
    raw, headers = tamper(*signed(github_payload()))
    result = call("/hooks/github", raw, headers)
    assert (result.status, result.requests) == (401, [])


def test_github_replayed_delivery_is_not_enqueued_again() -> None:
    seen = MemorySeen()
    raw, headers = signed(github_payload())
    assert call("/hooks/github", raw, headers, seen=seen).status == 202
    replay = call("/hooks/github", raw, headers, seen=seen)
    assert (replay.status, replay.requests) == (204, [])
    raw2, headers2 = signed(github_payload(), delivery="d-2")
    assert call("/hooks/github", raw2, headers2, seen=seen).status == 202


@pytest.mark.parametrize("updated_at", ["2026-11-28T10:00:00Z", "2026-11-28T13:00:00Z"])
def test_github_stale_or_future_delivery_is_refused(updated_at: str) -> None:
    raw, headers = signed(github_payload(updated_at=updated_at))
    assert call("/hooks/github", raw, headers).status == 401


@pytest.mark.parametrize(
    ("payload", "event_name"),
    [
        ({"zen": "Keep it logically awesome.", "hook_id": 1}, "ping"),
        (github_payload(), "push"),
        ({**github_payload(), "action": "deleted"}, "registry_package"),
        (github_payload(package_type="npm"), "registry_package"),
        (github_payload(tag=None), "registry_package"),
    ],
)
def test_github_events_that_name_no_container_tag_are_ignored(payload: dict[str, Any], event_name: str) -> None:
    raw, headers = signed(payload, event_name=event_name)
    result = call("/hooks/github", raw, headers)
    assert (result.status, result.requests) == (204, [])


def test_github_bad_delivery_id_or_tag_is_400() -> None:
    raw, headers = signed(github_payload(), delivery="bad id\n")
    assert call("/hooks/github", raw, headers).status == 400
    raw, headers = signed(github_payload(tag="1.0\x07"))
    assert call("/hooks/github", raw, headers).status == 400


def test_github_malformed_delivery_does_not_burn_its_id() -> None:
    seen = MemorySeen()
    raw, headers = signed(github_payload(tag="bad tag"))
    assert call("/hooks/github", raw, headers, seen=seen).status == 400
    raw, headers = signed(github_payload())
    assert call("/hooks/github", raw, headers, seen=seen).status == 202


# --- Docker Hub -------------------------------------------------------------------------------------------------


DOCKERHUB = {
    "callback_url": "https://registry.hub.docker.com/u/org/app/hook/x/",
    "push_data": {"pushed_at": 1764331190, "pusher": "ci", "tag": "2.1"},
    "repository": {"repo_name": "org/app", "name": "app", "namespace": "org"},
}


def test_dockerhub_with_the_url_token_is_a_check_request() -> None:
    (request,) = call(f"/hooks/dockerhub/{TOKEN}", DOCKERHUB).requests
    assert (request.image, request.tag, request.digest) == ("registry-1.docker.io/org/app", "2.1", None)
    assert request.event_time == datetime.fromtimestamp(1764331190, UTC)


def test_dockerhub_wrong_or_missing_token_is_401() -> None:
    assert call("/hooks/dockerhub/guess", DOCKERHUB).status == 401
    assert call("/hooks/dockerhub/", DOCKERHUB).status == 401


def test_dockerhub_official_image_and_bad_names() -> None:
    official = {**DOCKERHUB, "repository": {"repo_name": "nginx"}}
    (request,) = call(f"/hooks/dockerhub/{TOKEN}", official).requests
    assert request.image == "registry-1.docker.io/library/nginx"
    bad = {**DOCKERHUB, "push_data": {"tag": "1.0;rm -rf /"}}
    assert call(f"/hooks/dockerhub/{TOKEN}", bad).status == 400


# --- responses and logs -----------------------------------------------------------------------------------------


def test_nothing_from_the_request_is_reflected_or_logged_raw(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="audit.hooks")
    marker = "1.0\x1b]8;;http://evil\x07"
    results = [
        distribution(event(tag=marker)),
        call("/hooks/distribution", {"events": [event(tag=marker)]}, {"Authorization": f"Bearer {marker}"}),
        call(f"/hooks/dockerhub/{marker}", DOCKERHUB),
    ]
    assert [r.status for r in results] == [400, 401, 401]
    for result in results:
        assert "evil" not in result.body and "\x1b" not in result.body
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "\x1b" not in logged and "\x07" not in logged
    assert TOKEN not in logged
    assert "\\x1b" in logged  # the escaped form is what the operator sees


def test_secrets_do_not_show_in_repr() -> None:
    assert TOKEN not in repr(SECRETS) and GH_SECRET not in repr(SECRETS)


# --- ECR --------------------------------------------------------------------------------------------------------


def ecr(action: Any = "PUSH", result: Any = "SUCCESS", **detail: Any) -> dict[str, Any]:
    return {
        "version": "0",
        "id": "13cde686-328b-6117-af20-0e5566167482",
        "detail-type": "ECR Image Action",
        "source": "aws.ecr",
        "account": "123456789012",
        "time": "2026-11-28T11:59:00Z",
        "region": "eu-west-1",
        "detail": {
            "result": result,
            "repository-name": "team/app",
            "image-digest": DIGEST,
            "action-type": action,
            "image-tag": "1.0",
            **detail,
        },
    }


def test_ecr_push_and_delete() -> None:
    push = from_ecr_event(ecr())
    assert push is not None
    assert (push.image, push.tag, push.action, push.source) == (
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app",
        "1.0",
        HookAction.PUSH,
        HookSource.ECR,
    )
    assert push.event_time == NOW - timedelta(minutes=1)
    delete = from_ecr_event(ecr("DELETE", **{"image-tag": None}))
    assert delete is not None and (delete.action, delete.tag) == (HookAction.DELETE, None)


@pytest.mark.parametrize(
    "ignored",
    [
        ecr(result="FAILURE"),
        ecr("REPLICATE"),
        ecr(**{"image-tag": None}),  # push by digest
        {**ecr(), "source": "aws.s3"},
        {**ecr(), "detail-type": "ECR Image Scan"},
    ],
)
def test_ecr_events_without_a_tag_change_are_none(ignored: dict[str, Any]) -> None:
    assert from_ecr_event(ignored) is None


@pytest.mark.parametrize(
    "bad",
    [ecr(**{"repository-name": "Team/App"}), ecr(**{"image-tag": "a\nb"}), {**ecr(), "account": "12/../x"}],
)
def test_ecr_event_outside_the_grammar_raises(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidEventError):
        from_ecr_event(bad)


# --- queue messages ---------------------------------------------------------------------------------------------


def test_message_round_trip() -> None:
    (request,) = distribution(event()).requests
    text = request.to_message()
    assert json.loads(text)["v"] == 1
    assert CheckRequest.from_message(text) == request


@given(
    tag=st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,20}", fullmatch=True) | st.none(),
    action=st.sampled_from(HookAction),
    source=st.sampled_from(HookSource),
)
def test_message_round_trip_property(tag: str | None, action: HookAction, source: HookSource) -> None:
    request = CheckRequest(registry="ghcr.io", repository="org/app", tag=tag, action=action, source=source)
    assert CheckRequest.from_message(request.to_message()) == request


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        json.dumps({"registry": "ghcr.io", "repository": "org/app", "tag": "1", "action": "push", "source": "ecr"}),
        json.dumps(
            {"v": 2, "registry": "ghcr.io", "repository": "org/app", "tag": "1", "action": "push", "source": "ecr"}
        ),
        json.dumps(
            {"v": 1, "registry": "ghcr.io", "repository": "org/app", "tag": "1\x1b", "action": "push", "source": "ecr"}
        ),
        json.dumps(
            {"v": 1, "registry": "ghcr.io", "repository": "Org/app", "tag": "1", "action": "push", "source": "ecr"}
        ),
        json.dumps(
            {"v": 1, "registry": "docker.io", "repository": "nginx", "tag": "1", "action": "push", "source": "ecr"}
        ),
        json.dumps(
            {"v": 1, "registry": "ghcr.io", "repository": "org/app", "tag": "1", "action": "pull", "source": "ecr"}
        ),
        json.dumps(
            {
                "v": 1,
                "registry": "ghcr.io",
                "repository": "org/app",
                "tag": "1",
                "action": "push",
                "source": "ecr",
                "x": 1,
            }
        ),
        json.dumps(
            {
                "v": 1,
                "registry": "ghcr.io",
                "repository": "org/app",
                "tag": "1",
                "action": "push",
                "source": "ecr",
                "event_time": "2026-01-01T00:00:00",
            }
        ),
        "{" + " " * 20_000 + "}",
    ],
)
def test_invalid_messages_raise_a_clear_error_without_echoing_input(text: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        CheckRequest.from_message(text)
    assert "\x1b" not in caught.value.message
