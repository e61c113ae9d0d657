"""The internet-facing webhook receiver (Lambda Function URL): verify, normalise, enqueue, answer; nothing else.

It holds the webhook secrets and `sqs:SendMessage` on the push-event queue, no registry credentials, tables or
topic: a flaw here can at worst queue a check of a tag, which the audit function then judges from the registry
and the trust table. Verification and parsing are `audit.hooks`, shared with `digest-audit listen`.
It never reflects input (fixed response texts) and never logs the path (the Docker Hub route carries the token),
headers or bodies. boto3 clients are made once per container, on first use.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from audit.config import MIN_WEBHOOK_TOKEN_LENGTH, Environment
from audit.errors import ConfigError
from audit.hooks import MAX_BODY_BYTES, CheckRequest, HookResult, HookSecrets, MemorySeen, receive

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_sqs import SQSClient

ENV_QUEUE_URL = "PUSH_EVENT_QUEUE_URL"
ENV_GRACE = "DIGEST_AUDIT_GRACE"
ENV_SOURCES = "DIGEST_AUDIT_HOOK_SOURCES"
ENV_TOKEN_SECRET = "WEBHOOK_TOKEN_SECRET_ARN"  # noqa: S105 - a variable name, not a secret
ENV_GITHUB_SECRET = "GITHUB_WEBHOOK_SECRET_ARN"  # noqa: S105 - a variable name, not a secret
#: Every variable the receiver function reads (template.yaml sets exactly these). Not `audit.config`'s
#: RECEIVER_VARIABLES: those hold the secrets themselves, for `listen`; this function reads only their ARNs.
FUNCTION_VARIABLES = (ENV_QUEUE_URL, ENV_GRACE, ENV_SOURCES, ENV_TOKEN_SECRET, ENV_GITHUB_SECRET)

#: SQS's own limits: DelaySeconds 0-900, ten entries per SendMessageBatch.
MAX_DELAY_SECONDS = 900
_BATCH = 10
#: How long a secret value is reused before it is read again (a rotated secret takes effect within this).
SECRET_MAX_AGE_SECONDS = 300.0
#: Routes by source; the Docker Hub route ends with the token, so it is matched by prefix.
_ROUTES = {"distribution": "/hooks/distribution", "github": "/hooks/github", "dockerhub": "/hooks/dockerhub/"}

# Lambda's logging controls (JSON format, ApplicationLogLevel in template.yaml) configure the root logger.
log = logging.getLogger("digest_audit.receiver")
# At DEBUG, botocore logs response bodies: GetSecretValue's would put a webhook secret in the log. Pinned above
# DEBUG whatever the application log level is.
for _noisy in ("botocore", "boto3", "urllib3"):
    logging.getLogger(_noisy).setLevel(logging.INFO)

#: Delivery ids already seen by this container (GitHub replays). Containers do not share it: a replay that lands
#: on another container only causes one more check of the same tag, which dedup makes silent.
_SEEN = MemorySeen(capacity=10_000)


@dataclass(frozen=True)
class ReceiverConfig:
    queue_url: str
    grace_seconds: int
    sources: frozenset[str]
    token_secret: str | None
    github_secret: str | None


def receiver_config(env: Environment) -> ReceiverConfig:
    queue_url = env.text(ENV_QUEUE_URL)
    if not queue_url:
        raise ConfigError(f"{ENV_QUEUE_URL} is not set", hint="set it to the push-event queue's URL")
    grace = env.integer(ENV_GRACE, 60, minimum=0)
    if grace > MAX_DELAY_SECONDS:
        raise ConfigError(f"{ENV_GRACE}={grace} is over SQS's {MAX_DELAY_SECONDS} s", hint="use 0-900 seconds")
    sources = frozenset(s.strip() for s in (env.text(ENV_SOURCES) or "").split(",") if s.strip())
    unknown = sources - set(_ROUTES)
    if unknown:
        raise ConfigError(
            f"{ENV_SOURCES} names unknown sources {sorted(unknown)}", hint="use distribution, github, dockerhub"
        )
    config = ReceiverConfig(
        queue_url=queue_url,
        grace_seconds=grace,
        sources=sources,
        token_secret=env.text(ENV_TOKEN_SECRET) or None,
        github_secret=env.text(ENV_GITHUB_SECRET) or None,
    )
    if sources & {"distribution", "dockerhub"} and not config.token_secret:
        raise ConfigError(f"{ENV_TOKEN_SECRET} is not set", hint="the distribution and Docker Hub routes need it")
    if "github" in sources and not config.github_secret:
        raise ConfigError(f"{ENV_GITHUB_SECRET} is not set", hint="the GitHub route needs it")
    return config


@cache
def sqs_client() -> SQSClient:
    """One client per container (a deliberate warm cache); honours AWS_ENDPOINT_URL."""
    import boto3  # noqa: PLC0415 - deferred: the first request pays for it, not the import

    return boto3.client("sqs")


@cache
def secrets_client() -> SecretsManagerClient:
    import boto3  # noqa: PLC0415 - deferred, see above

    return boto3.client("secretsmanager")


class SecretCache:
    """Secret values per ARN, reused for `max_age` seconds (a deliberate per-container cache)."""

    def __init__(self, read: Callable[[str], str], *, max_age: float = SECRET_MAX_AGE_SECONDS) -> None:
        self._read = read
        self._max_age = max_age
        self._values: dict[str, tuple[float, str]] = {}

    def get(self, secret_id: str) -> str:
        cached = self._values.get(secret_id)
        if cached is not None and time.monotonic() - cached[0] < self._max_age:
            return cached[1]
        value = self._read(secret_id)
        self._values[secret_id] = (time.monotonic(), value)
        return value

    def clear(self) -> None:
        self._values.clear()


def _read_secret(secret_id: str) -> str:
    value = secrets_client().get_secret_value(SecretId=secret_id).get("SecretString")
    if not value:
        raise ConfigError("a webhook secret has no string value", hint="store the token as plain text")
    return value


_secrets = SecretCache(_read_secret)


def hook_secrets(config: ReceiverConfig, path: str) -> HookSecrets:
    """The secrets of the route `path` names, if its source is switched on; an empty HookSecrets answers 404."""
    if path == _ROUTES["github"] and "github" in config.sources and config.github_secret:
        return HookSecrets(github_secret=_secrets.get(config.github_secret))
    token_route = (path == _ROUTES["distribution"] and "distribution" in config.sources) or (
        path.startswith(_ROUTES["dockerhub"]) and "dockerhub" in config.sources
    )
    if token_route and config.token_secret:
        token = _secrets.get(config.token_secret)
        if len(token) < MIN_WEBHOOK_TOKEN_LENGTH:  # the same floor as `listen`: the Docker Hub URL's only credential
            raise ConfigError(
                f"the webhook token is shorter than {MIN_WEBHOOK_TOKEN_LENGTH} characters",
                hint="store a long random value in the secret (the stack generates 48 characters)",
            )
        return HookSecrets(webhook_token=token)
    return HookSecrets()


def enqueue(requests: list[CheckRequest], config: ReceiverConfig) -> None:
    """Send every request, `grace` seconds delayed; raises when SQS did not take one of them."""
    client = sqs_client()
    for start in range(0, len(requests), _BATCH):
        chunk = requests[start : start + _BATCH]
        answer = client.send_message_batch(
            QueueUrl=config.queue_url,
            Entries=[
                {"Id": str(index), "MessageBody": request.to_message(), "DelaySeconds": config.grace_seconds}
                for index, request in enumerate(chunk)
            ],
        )
        failed = answer.get("Failed", [])
        if failed:
            codes = sorted({entry.get("Code", "?") for entry in failed})
            raise RuntimeError(f"SQS refused {len(failed)} of {len(chunk)} messages ({', '.join(codes)})")


def _response(status: int, body: str, allow: str | None = None) -> dict[str, Any]:
    headers = {"content-type": "text/plain; charset=utf-8", "cache-control": "no-store"}
    if allow:
        headers["allow"] = allow
    return {"statusCode": status, "headers": headers, "body": body}


def _answer(result: HookResult) -> dict[str, Any]:
    return _response(result.status, result.body, result.allow)


def _request_parts(event: Mapping[str, Any]) -> tuple[str, str, dict[str, str], bytes] | HookResult:
    """Method, path, headers and raw body of a Function URL (payload v2) event, or the answer to a malformed one."""
    try:
        method = str(event["requestContext"]["http"]["method"])
        path = str(event.get("rawPath") or "/")
    except (KeyError, TypeError):
        return HookResult(400, reason="not a Function URL event")
    raw_headers = event.get("headers") or {}
    if not isinstance(raw_headers, dict):
        return HookResult(400, reason="headers are not a map")
    headers = {str(name): str(value) for name, value in raw_headers.items()}
    text = event.get("body") or ""
    if not isinstance(text, str):
        return HookResult(400, reason="body is not text")
    # Base64 is 4/3 of the bytes: refuse a body that cannot fit before decoding it.
    if len(text) > MAX_BODY_BYTES * 4 // 3 + 4:
        return HookResult(413, reason=f"body over the {MAX_BODY_BYTES} byte limit")
    if event.get("isBase64Encoded"):
        try:
            body = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return HookResult(400, reason="body is not valid base64")
    else:
        body = text.encode("utf-8", errors="surrogateescape")
    return method, path, headers, body


def reset_warm_caches() -> None:
    """Forget clients, secret values and seen delivery ids (a new container: tests, or after a configuration change)."""
    global _SEEN  # noqa: PLW0603 - the documented per-container cache
    sqs_client.cache_clear()
    secrets_client.cache_clear()
    _secrets.clear()
    _SEEN = MemorySeen(capacity=10_000)


def current_time() -> datetime:
    """The receiver's clock (GitHub's stale-delivery check); tests replaying a recorded delivery set it."""
    return datetime.now(UTC)


def lambda_handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    try:
        config = receiver_config(Environment())
    except ConfigError as exc:
        log.error("receiver misconfigured: %s (%s)", exc.message, exc.hint)  # noqa: TRY400 - no traceback needed
        return _response(503, "unavailable")
    parts = _request_parts(event if isinstance(event, dict) else {})
    if isinstance(parts, HookResult):
        log.warning("request refused (%d): %s", parts.status, parts.reason)
        return _answer(parts)
    method, path, headers, body = parts
    try:
        secrets = hook_secrets(config, path)
    except ConfigError as exc:
        log.error("webhook secret unusable: %s (%s)", exc.message, exc.hint)  # noqa: TRY400
        return _response(503, "unavailable")
    except Exception as exc:  # botocore's error types; the message may name the secret, never its value
        log.error("cannot read a webhook secret: %s", type(exc).__name__)  # noqa: TRY400
        return _response(503, "unavailable")  # the registry retries later
    result = receive(method, path, headers, body, secrets, now=current_time(), seen=_SEEN)
    if result.status == 202:
        try:
            enqueue(result.requests, config)
        except Exception as exc:  # botocore's error types: the registry retries on a 5xx
            log.error("cannot queue %d check request(s): %s", len(result.requests), type(exc).__name__)  # noqa: TRY400
            return _response(503, "unavailable")
        log.info("queued %d check request(s), checked in %d s", len(result.requests), config.grace_seconds)
    return _answer(result)
