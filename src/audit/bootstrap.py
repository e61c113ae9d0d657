"""Composition root: wires the real adapters (httpx registry client, DynamoDB/SNS or local files) from settings.

boto3, the stores, the registry client (httpx) and the engine are imported where they are first needed:
`digest-audit check` uses no boto3 (about 90 ms of start-up per process), and `import handler` (the Lambda's
cold start) loads no adapter before the first invocation builds them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Final

from audit.config import (
    ENV_CREDENTIALS_SECRET,
    ENV_STATE_TABLE,
    ENV_TOPIC_ARN,
    ENV_TRUST_TABLE,
    AuditConfig,
    Environment,
    RegistryOptions,
    audit_config,
    registry_options,
)
from audit.errors import ConfigError, CredentialsError
from audit.models import ImageRef
from audit.packages import is_package_spec, package_image_name

if TYPE_CHECKING:
    from botocore.config import Config
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sns import SNSClient

    from audit.adapters.package_index import PackageIndexClient
    from audit.adapters.registry import CredentialProvider, RegistryClient, RegistrySettings, StaticCredentials
    from audit.adapters.sns_alerts import SnsAlerts
    from audit.ports import RunLease, StateStore, TrustReader, TrustStore
    from audit.service import RunOptions, RunReport


#: The AWS SDK and its HTTP library print request headers (SigV4 signatures, session tokens) and response bodies
#: (a Secrets Manager `SecretString` with registry passwords) at DEBUG. Their loggers are pinned to WARNING, so
#: no root level (LOG_LEVEL, Lambda's ApplicationLogLevel=DEBUG, `-vv`) can make them print a secret.
SDK_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer")


def pin_sdk_loggers() -> None:
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


# Every entry point (the Lambda handler, every CLI command that reaches AWS) imports this module before boto3.
pin_sdk_loggers()


def registry_settings(options: RegistryOptions) -> RegistrySettings:
    from audit.adapters.registry import RegistrySettings  # noqa: PLC0415 - deferred: see the module docstring

    return RegistrySettings(
        insecure_registries=options.insecure_registries,
        ca_file=options.ca_file,
        timeout=options.timeout,
        concurrency=options.concurrency,
    )


def check_workers(settings: RegistrySettings) -> int:
    """How many checks run at once: twice the per-registry maximum, so one registry at its adaptive maximum
    still leaves workers for the others, while memory stays flat at any number of tags."""
    return 2 * settings.concurrency


def credentials(options: RegistryOptions, *, secret_text: str | None = None) -> CredentialProvider:
    """Secret (Lambda) first, then Docker's config.json, then ECR tokens for ECR hosts."""
    from audit.adapters.registry import (  # noqa: PLC0415 - deferred: see the module docstring
        ChainCredentials,
        DockerConfigCredentials,
        EcrCredentials,
    )

    providers: list[CredentialProvider] = []
    if secret_text is not None:
        providers.append(static_credentials(secret_text, origin=options.credentials_secret or "secret"))
    providers.append(DockerConfigCredentials(options.docker_config))
    if options.enable_ecr:
        providers.append(EcrCredentials())
    return ChainCredentials(*providers)


def static_credentials(secret_text: str, *, origin: str) -> StaticCredentials:
    from audit.adapters.registry import StaticCredentials  # noqa: PLC0415 - deferred: see the module docstring

    try:
        mapping = json.loads(secret_text)
    except json.JSONDecodeError:
        raise CredentialsError(
            f"registry credentials secret {origin} is not valid JSON",
            hint='store {"registry.example.com": {"username": "...", "password": "..."}}',
        ) from None
    return StaticCredentials.from_mapping(mapping, source=f"registry credentials secret {origin}")


def registry_client(options: RegistryOptions, *, secret_text: str | None = None) -> RegistryClient:
    from audit.adapters.registry import RegistryClient  # noqa: PLC0415 - deferred: see the module docstring

    return RegistryClient(registry_settings(options), credentials(options, secret_text=secret_text))


def package_index(
    options: RegistryOptions, *, secret_text: str | None = None, netrc: bool = False
) -> PackageIndexClient:
    """Index credentials: the same secret map as registries (host -> username/password or token), `netrc` for
    the CLI, and CodeArtifact tokens (`codeartifact:GetAuthorizationToken`) for CodeArtifact hosts."""
    from audit.adapters.package_index import (  # noqa: PLC0415 - deferred: see the module docstring
        CodeArtifactCredentials,
        IndexSettings,
        NetrcCredentials,
        PackageIndexClient,
    )
    from audit.adapters.registry import ChainCredentials  # noqa: PLC0415 - deferred: see the module docstring

    providers: list[CredentialProvider] = []
    if secret_text is not None:
        providers.append(static_credentials(secret_text, origin=options.credentials_secret or "secret"))
    if netrc:
        providers.append(NetrcCredentials())
    providers.append(CodeArtifactCredentials())
    settings = IndexSettings(
        insecure_hosts=options.insecure_registries, ca_file=options.ca_file, timeout=options.timeout
    )
    return PackageIndexClient(settings, ChainCredentials(*providers))


# --- the AWS retry policy, in one place -----------------------------------------------------------------------
#: botocore's `standard` mode: exponential back-off with full jitter (1 s base for throttling, capped at 20 s),
#: a client-side retry quota, and throttling, 5xx and connection errors retried for every operation.
AWS_RETRY_MODE: Final = "standard"
#: DynamoDB: 8 attempts (7 retries, at most ~1+2+4+8+16+20+20 s of throttling back-off) so a state save outlasts
#: a throttling burst instead of re-sending its alerts next run; bounded well inside the Lambda timeout.
DYNAMODB_MAX_ATTEMPTS = 8
#: SNS: 4 attempts per PublishBatch call; failed entries are re-sent by SnsAlerts with the same back-off.
SNS_MAX_ATTEMPTS = 4
SNS_ENTRY_ATTEMPTS = 3
_BACKOFF_CAP_SECONDS = 20.0


def aws_backoff(retry: int) -> float:
    """Seconds before the n-th retry our own code makes (UnprocessedItems, failed PublishBatch entries):
    botocore's standard-mode throttling back-off, `rand(0, 1) * min(2 ** (n - 1), 20)`."""
    return random.random() * min(2.0 ** (retry - 1), _BACKOFF_CAP_SECONDS)  # noqa: S311 - jitter, not secrecy


def aws_config(max_attempts: int) -> Config:
    from botocore.config import Config  # noqa: PLC0415 - deferred: see the module docstring

    return Config(retries={"mode": AWS_RETRY_MODE, "total_max_attempts": max_attempts})


@cache
def dynamodb_client() -> DynamoDBClient:
    """One client per process (a deliberate Lambda warm cache); honours AWS_ENDPOINT_URL."""
    import boto3  # noqa: PLC0415 - deferred: see the module docstring

    return boto3.client("dynamodb", config=aws_config(DYNAMODB_MAX_ATTEMPTS))


@cache
def sns_client() -> SNSClient:
    import boto3  # noqa: PLC0415 - deferred: see the module docstring

    return boto3.client("sns", config=aws_config(SNS_MAX_ATTEMPTS))


def require(value: str | None, *, what: str, variable: str, flag: str | None = None) -> str:
    if value:
        return value
    where = f"set {variable}" + (f" or pass {flag}" if flag else "")
    raise ConfigError(f"no {what} configured", hint=where)


def store_file(path: Path, *, flag: str, create: bool) -> Path:
    """A local store file: a reader needs it to exist (an empty audit must not pass for a clean one)."""
    if path.exists() and not path.is_file():
        raise ConfigError(f"{flag} {path} is not a file", hint=f"give {flag} the path of a JSON file")
    if not path.exists():
        if not create:
            raise ConfigError(
                f"{flag} {path} does not exist",
                hint="check the path; `digest-audit record` or `trust import` creates a trust file",
            )
        if not path.parent.is_dir():
            raise ConfigError(f"{flag} {path}: directory {path.parent} does not exist", hint="create it first")
    return path


def trust_store(trust_file: Path | None, config: AuditConfig, *, create: bool = False) -> TrustStore:
    """`--trust-file` for people without AWS, else the DynamoDB table named by TRUSTED_DIGESTS_TABLE.

    `create`: a missing file is a new, empty store (recording); otherwise it is an error (auditing).
    """
    from audit.adapters.dynamodb_store import DynamoTrustStore  # noqa: PLC0415 - deferred, see above
    from audit.adapters.file_store import FileTrustStore  # noqa: PLC0415

    if trust_file is not None:
        return FileTrustStore(store_file(trust_file, flag="--trust-file", create=create))
    table = require(config.trust_table, what="trust store", variable=ENV_TRUST_TABLE, flag="--trust-file FILE")
    return DynamoTrustStore(table, dynamodb_client())


def state_store(state_file: Path | None, config: AuditConfig) -> StateStore:
    from audit.adapters.dynamodb_store import DynamoStateStore  # noqa: PLC0415 - deferred, see above
    from audit.adapters.file_store import FileStateStore  # noqa: PLC0415

    if state_file is not None:
        # The state file starts empty on a first run; it only needs a directory to live in.
        return FileStateStore(store_file(state_file, flag="--state-file", create=True))
    table = require(config.state_table, what="audit state store", variable=ENV_STATE_TABLE, flag="--state-file FILE")
    return DynamoStateStore(table, dynamodb_client(), max_attempts=DYNAMODB_MAX_ATTEMPTS, backoff=aws_backoff)


def run_lease(state_file: Path | None, config: AuditConfig) -> RunLease:
    """The run lease lives where the state lives: next to the state file, or in the state table."""
    from audit.adapters.dynamodb_store import DynamoRunLease  # noqa: PLC0415 - deferred, see above
    from audit.adapters.file_store import FileRunLease  # noqa: PLC0415

    if state_file is not None:
        return FileRunLease(state_file)
    table = require(config.state_table, what="audit state store", variable=ENV_STATE_TABLE, flag="--state-file FILE")
    return DynamoRunLease(table, dynamodb_client(), duration=config.lease_duration)


def sns_alerts(config: AuditConfig) -> SnsAlerts:
    from audit.adapters.sns_alerts import SnsAlerts  # noqa: PLC0415 - deferred, see above

    topic = require(config.topic_arn, what="alert topic", variable=ENV_TOPIC_ARN, flag="--print-alerts")
    return SnsAlerts(topic, sns_client(), entry_attempts=SNS_ENTRY_ATTEMPTS, backoff=aws_backoff)


def image_name(text: str) -> str:
    """`registry/repository` of a repository name as a person types it (`openzaak/open-zaak`, `pypi:mylib`)."""
    if is_package_spec(text):
        return package_image_name(text)
    return ImageRef.parse(text).image


class LambdaApp:
    """Everything one warm Lambda container reuses between invocations: clients, token cache, event loop.

    The httpx connection pools belong to an event loop, so the container keeps one loop for its lifetime
    instead of `asyncio.run` per invocation; tokens and connections then survive between scheduled runs.
    """

    def __init__(self, config: AuditConfig, secret_text: str | None) -> None:
        from audit.drift import AlertPolicy  # noqa: PLC0415 - deferred, see above

        self.config = config
        self.loop = asyncio.new_event_loop()
        self.registry = registry_client(config.registry, secret_text=secret_text)
        self.packages = package_index(config.registry, secret_text=secret_text)
        self.trust: TrustReader = trust_store(None, config)  # the audit role may only read the trust table
        self.state = state_store(None, config)
        self.lease = run_lease(None, config)
        self.alerts = sns_alerts(config)
        self.policy = AlertPolicy(
            reminder_interval=config.reminder_interval, unverifiable_after=config.unverifiable_after
        )

    @property
    def time_margin_seconds(self) -> float:
        """Stop starting checks when less than this is left: room for retries, re-verification and saving."""
        return self.config.reverify_delay + 2 * self.config.registry.timeout + 10

    def run(self, options: RunOptions, *, should_start: Callable[[], bool]) -> RunReport:
        from audit.service import AuditService  # noqa: PLC0415 - deferred, see above

        service = AuditService(
            self.trust,
            self.state,
            self.registry,
            self.alerts,
            alert_policy=self.policy,
            reverify_delay=self.config.reverify_delay,
            should_start=should_start,  # also ends tag listing: no further page once time is short
            packages=self.packages,
            lease=self.lease,
            max_tags_per_repository=self.config.max_tags_per_repository,
            max_in_flight=check_workers(self.registry.settings),
        )
        return self.loop.run_until_complete(service.run(options))


_lambda_app: LambdaApp | None = None


def lambda_app(env: Environment | None = None) -> LambdaApp:
    """Built once per container (a deliberate warm cache); configuration errors surface on first use."""
    global _lambda_app  # noqa: PLW0603 - the documented per-container cache
    if _lambda_app is None:
        env = env or Environment()
        config = audit_config(env, registry_options(env))
        secret_text = None
        if config.registry.credentials_secret:
            secret_text = read_secret(config.registry.credentials_secret)
        _lambda_app = LambdaApp(config, secret_text)
    return _lambda_app


def reset_lambda_app() -> None:
    """Forget the cached app (tests, or after a configuration change)."""
    global _lambda_app  # noqa: PLW0603
    if _lambda_app is not None:
        loop = _lambda_app.loop
        # An interrupted invocation may have left an audit suspended on this loop: cancel it, never resume it.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(_lambda_app.registry.aclose())
        loop.run_until_complete(_lambda_app.packages.aclose())
        loop.close()
    _lambda_app = None


def read_secret(secret_id: str) -> str:
    """The registry credentials JSON, cached by Powertools for five minutes."""
    from aws_lambda_powertools.utilities import parameters  # noqa: PLC0415 - deferred, see above

    pin_sdk_loggers()  # again, in case something reconfigured logging since import (idempotent, cheap)
    try:
        value = parameters.get_secret(secret_id, max_age=300)
    except Exception as exc:  # Powertools wraps botocore errors in its own types
        raise CredentialsError(
            f"cannot read registry credentials secret {secret_id}: {type(exc).__name__}",
            hint=f"check {ENV_CREDENTIALS_SECRET} and that the function may read it",
        ) from None
    return value if isinstance(value, str) else json.dumps(value)


# --- recorder-side wiring (10uc) ------------------------------------------------------------------------------
# Imports kept in this section so the merge with the composition-root rewrite stays local.
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import datetime  # noqa: E402

from audit.config import ENV_GITHUB_TOKEN, ENV_GITLAB_TOKEN  # noqa: E402

if TYPE_CHECKING:
    from audit.ports import CiLogSource, Provisioning


def provisioning() -> Provisioning:
    """`digest-audit init`: tables and topic at the configured endpoint (AWS_ENDPOINT_URL honoured)."""
    from audit.adapters.aws_setup import AwsProvisioning  # noqa: PLC0415 - deferred, see above

    return AwsProvisioning(dynamodb_client(), sns_client)


@dataclass(frozen=True)
class CiLogOrigin:
    """Where `trust backfill` reads CI logs: exactly one of a saved log, GitHub Actions runs or GitLab CI jobs."""

    log: Path | None = None
    source: str | None = None  # the CI run a saved log belongs to
    commit: str | None = None
    github: str | None = None  # OWNER/REPO
    gitlab: str | None = None  # project path or id
    api_url: str | None = None  # GitHub Enterprise or self-hosted GitLab
    workflow: str | None = None
    branch: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    max_runs: int = 1000
    max_wait: float = 900.0  # seconds to wait for rate limits in total


@contextmanager
def ci_log_source(origin: CiLogOrigin, env: Environment, *, notify: Callable[[str], None]) -> Iterator[CiLogSource]:
    """The CI log source of `origin`, its HTTP client closed on exit; tokens from GITHUB_TOKEN / GITLAB_TOKEN."""
    from audit.adapters.ci.github import DEFAULT_API_URL as GITHUB_API_URL  # noqa: PLC0415 - deferred, see above
    from audit.adapters.ci.github import GitHubActions  # noqa: PLC0415
    from audit.adapters.ci.gitlab import DEFAULT_API_URL as GITLAB_API_URL  # noqa: PLC0415
    from audit.adapters.ci.gitlab import GitLabJobs  # noqa: PLC0415
    from audit.adapters.ci.http import CiHttp  # noqa: PLC0415
    from audit.adapters.ci.saved_log import SavedLog  # noqa: PLC0415

    if origin.log is not None:
        yield SavedLog(origin.log, source=origin.source or "", commit=origin.commit)
        return
    source: CiLogSource
    if origin.github:
        token = env.text(ENV_GITHUB_TOKEN)
        if token is None:
            notify(f"{ENV_GITHUB_TOKEN} is not set; GitHub serves run logs to authenticated requests only")
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        http = CiHttp(origin.api_url or GITHUB_API_URL, token_headers=headers, max_wait=origin.max_wait, notify=notify)
        web = None if origin.api_url is None else http.api_url.removesuffix("/api/v3")
        source = GitHubActions(
            http,
            origin.github,
            web_url=web,
            workflow=origin.workflow,
            branch=origin.branch,
            since=origin.since,
            until=origin.until,
            max_runs=origin.max_runs,
            notify=notify,
        )
    else:
        token = env.text(ENV_GITLAB_TOKEN)
        headers = {"PRIVATE-TOKEN": token} if token else {}
        http = CiHttp(origin.api_url or GITLAB_API_URL, token_headers=headers, max_wait=origin.max_wait, notify=notify)
        source = GitLabJobs(http, origin.gitlab or "", max_jobs=origin.max_runs, notify=notify)
    try:
        yield source
    finally:
        http.close()
