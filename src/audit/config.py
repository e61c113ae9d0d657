"""Every setting digest-audit reads from the environment, validated once, with errors that name the variable."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Final

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


#: Per request to a registry or index, connect to last byte.
DEFAULT_TIMEOUT: Final = 10.0
#: Requests in flight per registry at most. 64 is where the bench's raw loop stops gaining through a 50 ms
#: proxy for 2,000 tags and where loopback has long levelled off; the adaptive limit only gets there while
#: latency holds, and halves at the first 429, 503 or timeout.
DEFAULT_CONCURRENCY: Final = 64
#: Seconds to wait before re-checking a drift or a missing tag (CI may have pushed and recorded meanwhile).
DEFAULT_REVERIFY_DELAY: Final = 5.0
DEFAULT_REMINDER_INTERVAL: Final = timedelta(hours=24)
DEFAULT_UNVERIFIABLE_AFTER: Final = 3
#: How long a run lease lasts before another run may take it over: longer than the Lambda timeout (900 s is
#: Lambda's maximum), so a live run never loses it and a killed one blocks the schedule for one slot.
DEFAULT_LEASE_DURATION: Final = timedelta(seconds=900)
USER_AGENT: Final = "digest-audit/0.1"
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


@dataclass(frozen=True)
class RegistrySettings:
    """How to reach registries and package indexes (and with which credentials); the registry client takes it."""

    insecure_registries: frozenset[str] = frozenset()  # "host" (all ports) or "host:port": plain HTTP
    ca_file: Path | None = None  # added to the system trust store (and certifi), not replacing it
    timeout: float = DEFAULT_TIMEOUT  # per request, connect to last byte
    concurrency: int = DEFAULT_CONCURRENCY  # the most requests in flight per registry host (adaptive below it)
    max_attempts: int = 3
    max_retry_after: float = 60.0
    user_agent: str = USER_AGENT
    backoff_base: float = 0.2  # first retry waits about this long (jittered), doubling each attempt
    docker_config: Path | None = None  # the directory of Docker's config.json (None: DOCKER_CONFIG or ~/.docker)
    enable_ecr: bool = True  # ECR tokens for ECR hosts
    credentials_secret: str | None = None  # the secret holding registry credentials (the Lambda reads it)
    netrc: bool = False  # ~/.netrc credentials for package indexes (the CLI)

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ConfigError(f"the registry timeout must be positive, not {self.timeout}")
        if self.concurrency < 1:
            raise ConfigError("registry concurrency must be at least 1")
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        object.__setattr__(
            self,
            "insecure_registries",
            frozenset(entry.strip().lower() for entry in self.insecure_registries),
        )

    def allows_plain_http(self, host: str, port: int | None) -> bool:
        """Whether plain HTTP may be used to host:port (port None: the default HTTP port)."""
        name = host.lower()
        if ":" in name and not name.startswith("["):
            name = f"[{name}]"  # httpx gives IPv6 hosts without brackets
        listed = self.insecure_registries
        return name in listed or f"{name}:{port if port is not None else _DEFAULT_PORTS['http']}" in listed

    @property
    def check_workers(self) -> int:
        """How many checks run at once: twice the per-registry maximum, so one registry at its adaptive maximum
        still leaves workers for the others, while memory stays flat at any number of tags."""
        return 2 * self.concurrency


@dataclass(frozen=True)
class StoreSettings:
    """Where trust and audit state live: DynamoDB tables, or local JSON files (`--trust-file`, `--state-file`)."""

    trust_table: str | None = None
    state_table: str | None = None
    trust_file: Path | None = None
    state_file: Path | None = None
    lease_duration: timedelta = DEFAULT_LEASE_DURATION

    @property
    def local(self) -> bool:
        return self.trust_file is not None or self.state_file is not None


@dataclass(frozen=True)
class AlertSettings:
    """Where alerts go (the SNS topic, or printed) and when an open problem is told again."""

    topic_arn: str | None = None
    print_alerts: bool = False  # print on stdout instead of publishing to the topic
    reminder_interval: timedelta = DEFAULT_REMINDER_INTERVAL
    unverifiable_after: int = DEFAULT_UNVERIFIABLE_AFTER


@dataclass(frozen=True)
class AuditSettings:
    """How one audit run behaves."""

    reverify_delay: float = DEFAULT_REVERIFY_DELAY
    max_tags_per_repository: int = DEFAULT_MAX_TAGS_PER_REPOSITORY


@dataclass(frozen=True)
class CiSettings:
    """The API tokens `trust backfill` reads CI logs with (never the Lambda's: it reads no CI logs)."""

    github_token: str | None = field(default=None, repr=False)
    gitlab_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Settings:
    """Every setting of digest-audit, one object per concern; `from_environment` is the one reader of them."""

    registry: RegistrySettings = field(default_factory=RegistrySettings)
    stores: StoreSettings = field(default_factory=StoreSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    ci: CiSettings = field(default_factory=CiSettings)

    @classmethod
    def from_environment(
        cls,
        env: Environment | Mapping[str, str] | None = None,
        *,
        insecure: Iterable[str] = (),
        ca_file: Path | None = None,
        timeout: float | None = None,
        concurrency: int | None = None,
        docker_config: Path | None = None,
        netrc: bool = False,
        trust_file: Path | None = None,
        state_file: Path | None = None,
        print_alerts: bool = False,
        reverify_delay: float | None = None,
        reminder_interval: float | None = None,
        unverifiable_after: int | None = None,
        ci_tokens: bool = False,
    ) -> Settings:
        """The environment (os.environ by default) read once; a flag given (not None) wins over its variable.

        `ci_tokens`: read GITHUB_TOKEN / GITLAB_TOKEN too (only `trust backfill` does; the Lambda never).
        """
        environment = env if isinstance(env, Environment) else Environment(env)
        registry = registry_options(
            environment,
            insecure=insecure,
            ca_file=ca_file,
            timeout=timeout,
            concurrency=concurrency,
            docker_config=docker_config,
            netrc=netrc,
        )
        trust_table = environment.text(ENV_TRUST_TABLE)
        state_table = environment.text(ENV_STATE_TABLE)
        topic_arn = environment.text(ENV_TOPIC_ARN)
        env_reverify_delay = environment.number(ENV_REVERIFY_DELAY, DEFAULT_REVERIFY_DELAY)
        env_reminder = environment.number(ENV_REMINDER_INTERVAL, DEFAULT_REMINDER_INTERVAL.total_seconds(), minimum=1.0)
        env_unverifiable_after = environment.integer(ENV_UNVERIFIABLE_AFTER, DEFAULT_UNVERIFIABLE_AFTER, minimum=1)
        lease = environment.number(ENV_LEASE_SECONDS, DEFAULT_LEASE_DURATION.total_seconds(), minimum=1.0)
        max_tags = environment.integer(ENV_MAX_TAGS, DEFAULT_MAX_TAGS_PER_REPOSITORY, minimum=1)
        return cls(
            registry=registry,
            stores=StoreSettings(
                trust_table=trust_table,
                state_table=state_table,
                trust_file=trust_file,
                state_file=state_file,
                lease_duration=timedelta(seconds=lease),
            ),
            alerts=AlertSettings(
                topic_arn=topic_arn,
                print_alerts=print_alerts,
                reminder_interval=timedelta(seconds=reminder_interval or env_reminder),
                unverifiable_after=unverifiable_after or env_unverifiable_after,
            ),
            audit=AuditSettings(
                reverify_delay=reverify_delay if reverify_delay is not None else env_reverify_delay,
                max_tags_per_repository=max_tags,
            ),
            ci=CiSettings(
                github_token=environment.text(ENV_GITHUB_TOKEN), gitlab_token=environment.text(ENV_GITLAB_TOKEN)
            )
            if ci_tokens
            else CiSettings(),
        )

    @property
    def time_margin_seconds(self) -> float:
        """Stop starting checks when less than this is left: room for retries, re-verification and saving."""
        return self.audit.reverify_delay + 2 * self.registry.timeout + 10


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
    netrc: bool = False,
) -> RegistrySettings:
    """The registry part of `Settings.from_environment`: flags win over the environment; insecure registries
    from both are combined."""
    if ca_file is not None and not ca_file.is_file():
        raise ConfigError(f"--ca-file {ca_file} does not exist or is not a file", hint="give the path of a PEM file")
    if docker_config is not None and not docker_config.is_dir():
        raise ConfigError(
            f"--docker-config {docker_config} is not a directory",
            hint="give the directory that holds config.json (like DOCKER_CONFIG)",
        )
    return RegistrySettings(
        insecure_registries=env.insecure_registries()
        | parse_insecure_registries(insecure, origin="--insecure-registry"),
        ca_file=ca_file,
        timeout=timeout if timeout is not None else env.number(ENV_TIMEOUT, DEFAULT_TIMEOUT, minimum=0.1),
        concurrency=concurrency
        if concurrency is not None
        else env.integer(ENV_CONCURRENCY, DEFAULT_CONCURRENCY, minimum=1),
        docker_config=docker_config,
        enable_ecr=env.flag(ENV_ENABLE_ECR, True),
        credentials_secret=env.text(ENV_CREDENTIALS_SECRET),
        netrc=netrc,
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
