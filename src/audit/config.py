"""Every setting digest-audit reads from the environment, validated once, with errors that name the variable."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from audit.errors import ConfigError

ENV_TRUST_TABLE = "TRUSTED_DIGESTS_TABLE"
ENV_STATE_TABLE = "AUDIT_STATE_TABLE"
ENV_TOPIC_ARN = "ALERT_TOPIC_ARN"
ENV_CREDENTIALS_SECRET = "REGISTRY_CREDENTIALS_SECRET_ARN"  # noqa: S105 - a variable name, not a secret
ENV_ENABLE_ECR = "DIGEST_AUDIT_ENABLE_ECR"
ENV_REVERIFY_DELAY = "DIGEST_AUDIT_REVERIFY_DELAY"
ENV_REMINDER_INTERVAL = "DIGEST_AUDIT_REMINDER_INTERVAL"
ENV_UNVERIFIABLE_AFTER = "DIGEST_AUDIT_UNVERIFIABLE_AFTER"
ENV_INSECURE_REGISTRIES = "DIGEST_AUDIT_INSECURE_REGISTRIES"
ENV_CONCURRENCY = "DIGEST_AUDIT_CONCURRENCY"
ENV_TIMEOUT = "DIGEST_AUDIT_TIMEOUT"
# Read by `digest-audit trust backfill` only (never by the Lambda, so not in ALL_VARIABLES).
ENV_GITHUB_TOKEN = "GITHUB_TOKEN"  # noqa: S105 - a variable name, not a secret
ENV_GITLAB_TOKEN = "GITLAB_TOKEN"  # noqa: S105 - a variable name, not a secret

#: Webhook secrets of the push-event receiver (`listen` and the receiver function), never of the audit function.
ENV_WEBHOOK_TOKEN = "DIGEST_AUDIT_WEBHOOK_TOKEN"  # noqa: S105 - a variable name, not a secret
ENV_GITHUB_WEBHOOK_SECRET = "DIGEST_AUDIT_GITHUB_WEBHOOK_SECRET"  # noqa: S105 - a variable name, not a secret
RECEIVER_VARIABLES = (ENV_WEBHOOK_TOKEN, ENV_GITHUB_WEBHOOK_SECRET)
#: Shortest webhook token accepted: it is the only credential of the Docker Hub route (a URL), so it must be
#: long and random (`openssl rand -hex 32`).
MIN_WEBHOOK_TOKEN_LENGTH = 24
ENV_LEASE_SECONDS = "DIGEST_AUDIT_LEASE_SECONDS"
ENV_MAX_TAGS = "DIGEST_AUDIT_MAX_TAGS_PER_REPOSITORY"

#: Tag names read per repository with --track-new-tags. Ten pages of 1,000; every listed tag nobody recorded
#: costs one HEAD per run, so 10,000 stays within a few minutes and a few MB even on a slow registry, while a
#: registry listing millions of names cannot exhaust the Lambda's memory or time.
DEFAULT_MAX_TAGS_PER_REPOSITORY = 10_000

#: Every variable the code reads (besides AWS_* and POWERTOOLS_* which their libraries read), for docs and tests.
ALL_VARIABLES = (
    ENV_TRUST_TABLE,
    ENV_STATE_TABLE,
    ENV_TOPIC_ARN,
    ENV_CREDENTIALS_SECRET,
    ENV_ENABLE_ECR,
    ENV_REVERIFY_DELAY,
    ENV_REMINDER_INTERVAL,
    ENV_UNVERIFIABLE_AFTER,
    ENV_INSECURE_REGISTRIES,
    ENV_CONCURRENCY,
    ENV_TIMEOUT,
    ENV_LEASE_SECONDS,
    ENV_MAX_TAGS,
)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def parse_insecure_registries(values: Iterable[str], *, origin: str) -> frozenset[str]:
    """`HOST[:PORT]` entries; a bare HOST covers every port of that host."""
    hosts: set[str] = set()
    for raw in values:
        entry = raw.strip().lower()
        if not entry:
            continue
        if "://" in entry or "/" in entry:
            raise ConfigError(
                f"invalid insecure registry {raw!r} in {origin}",
                hint="give HOST or HOST:PORT only, e.g. 127.0.0.1:5000 (no scheme, no path)",
            )
        host, sep, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if sep and (not port.isdigit() or not 0 < int(port) < 65536):
            raise ConfigError(f"invalid port in insecure registry {raw!r} in {origin}", hint="use HOST:PORT")
        hosts.add(entry if sep else host)
    return frozenset(hosts)


@dataclass(frozen=True)
class RegistryOptions:
    """What the registry client needs; built from flags and the environment."""

    insecure_registries: frozenset[str] = frozenset()
    ca_file: Path | None = None
    timeout: float = 10.0
    concurrency: int = 64  # the most requests in flight per registry host; adaptive below it
    docker_config: Path | None = None
    enable_ecr: bool = True
    credentials_secret: str | None = None


@dataclass(frozen=True)
class AuditConfig:
    """Settings of the audit run (`digest-audit run` and the Lambda)."""

    trust_table: str | None = None
    state_table: str | None = None
    topic_arn: str | None = None
    reverify_delay: float = 5.0
    reminder_interval: timedelta = timedelta(hours=24)
    unverifiable_after: int = 3
    # How long a run lease lasts before another run may take it over: longer than the Lambda timeout (900 s
    # is Lambda's maximum), so a live run never loses it and a killed one blocks the schedule for one slot.
    lease_duration: timedelta = timedelta(seconds=900)
    max_tags_per_repository: int = DEFAULT_MAX_TAGS_PER_REPOSITORY
    registry: RegistryOptions = field(default_factory=RegistryOptions)


class Environment:
    """Typed, validated access to a mapping of environment variables."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if env is None else env

    def text(self, name: str) -> str | None:
        value = self._env.get(name, "").strip()
        return value or None

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(
                f"{name}={raw!r} is not a number", hint=f"set {name} to a number such as {default:g}"
            ) from None
        if not value >= minimum:  # also refuses NaN
            raise ConfigError(f"{name}={raw!r} must be at least {minimum:g}", hint=f"e.g. {name}={default:g}")
        return value

    def integer(self, name: str, default: int, *, minimum: int = 0) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(
                f"{name}={raw!r} is not a whole number",
                hint=f"set {name} to a whole number such as {default}",
            ) from None
        if value < minimum:
            raise ConfigError(f"{name}={raw!r} must be at least {minimum}", hint=f"e.g. {name}={default}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self._env.get(name)
        if raw is None:
            return default
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ConfigError(f"{name}={raw!r} is not true or false", hint=f"set {name}=true or {name}=false")

    def insecure_registries(self) -> frozenset[str]:
        raw = self._env.get(ENV_INSECURE_REGISTRIES, "")
        return parse_insecure_registries(raw.split(","), origin=ENV_INSECURE_REGISTRIES)


def registry_options(
    env: Environment,
    *,
    insecure: Iterable[str] = (),
    ca_file: Path | None = None,
    timeout: float | None = None,
    concurrency: int | None = None,
    docker_config: Path | None = None,
) -> RegistryOptions:
    """Flags win over the environment; insecure registries from both are combined."""
    if ca_file is not None and not ca_file.is_file():
        raise ConfigError(f"--ca-file {ca_file} does not exist or is not a file", hint="give the path of a PEM file")
    if docker_config is not None and not docker_config.is_dir():
        raise ConfigError(
            f"--docker-config {docker_config} is not a directory",
            hint="give the directory that holds config.json (like DOCKER_CONFIG)",
        )
    return RegistryOptions(
        insecure_registries=env.insecure_registries()
        | parse_insecure_registries(insecure, origin="--insecure-registry"),
        ca_file=ca_file,
        timeout=timeout if timeout is not None else env.number(ENV_TIMEOUT, 10.0, minimum=0.1),
        concurrency=concurrency if concurrency is not None else env.integer(ENV_CONCURRENCY, 64, minimum=1),
        docker_config=docker_config,
        enable_ecr=env.flag(ENV_ENABLE_ECR, True),
        credentials_secret=env.text(ENV_CREDENTIALS_SECRET),
    )


def audit_config(env: Environment, registry: RegistryOptions) -> AuditConfig:
    return AuditConfig(
        trust_table=env.text(ENV_TRUST_TABLE),
        state_table=env.text(ENV_STATE_TABLE),
        topic_arn=env.text(ENV_TOPIC_ARN),
        reverify_delay=env.number(ENV_REVERIFY_DELAY, 5.0),
        reminder_interval=timedelta(seconds=env.number(ENV_REMINDER_INTERVAL, 86400.0, minimum=1.0)),
        unverifiable_after=env.integer(ENV_UNVERIFIABLE_AFTER, 3, minimum=1),
        lease_duration=timedelta(seconds=env.number(ENV_LEASE_SECONDS, 900.0, minimum=1.0)),
        max_tags_per_repository=env.integer(ENV_MAX_TAGS, DEFAULT_MAX_TAGS_PER_REPOSITORY, minimum=1),
        registry=registry,
    )


def webhook_secrets(env: Environment) -> tuple[str | None, str | None]:
    """`(webhook token, GitHub secret)` of the receiver; each None when unset. A short token is refused."""
    token = env.text(ENV_WEBHOOK_TOKEN)
    if token is not None and len(token) < MIN_WEBHOOK_TOKEN_LENGTH:
        raise ConfigError(
            f"{ENV_WEBHOOK_TOKEN} is shorter than {MIN_WEBHOOK_TOKEN_LENGTH} characters",
            hint="use a long random value, e.g. `openssl rand -hex 32`; it is the Docker Hub route's only credential",
        )
    return token, env.text(ENV_GITHUB_WEBHOOK_SECRET)
