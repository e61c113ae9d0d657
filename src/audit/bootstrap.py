"""The composition root: `build(settings, **overrides) -> App` wires the real adapters (httpx registry client,
DynamoDB/SNS or local files) or whatever a test passes instead; the CLI, the handler, the demo and the tests
all get their ports here.

boto3, the stores, the registry client (httpx) and the engine are imported where they are first needed, and an
App builds each adapter on first use: `digest-audit check` uses no boto3 (about 90 ms of start-up per process),
and `import handler` (the Lambda's cold start) loads no adapter before the first invocation builds them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self, TextIO, TypedDict, Unpack

from audit.config import (
    ENV_CREDENTIALS_SECRET,
    ENV_GITHUB_TOKEN,
    ENV_STATE_TABLE,
    ENV_TOPIC_ARN,
    ENV_TRUST_TABLE,
    CiSettings,
    Environment,
    RegistrySettings,
    Settings,
)
from audit.errors import ConfigError, CredentialsError
from audit.models import ImageRef, utcnow
from audit.reference import is_package_spec

if TYPE_CHECKING:
    from botocore.config import Config
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sns import SNSClient

    from audit.adapters.package_index import PackageIndexClient
    from audit.adapters.registry import CredentialProvider, RegistryClient, StaticCredentials
    from audit.adapters.sns_alerts import SnsAlerts
    from audit.app.audit import AuditService
    from audit.app.listen import PushAudit
    from audit.drift import AlertPolicy
    from audit.ports import (
        Alerts,
        CiLogSource,
        ManifestReader,
        PackageIndex,
        Provisioning,
        Registry,
        RunLease,
        StateStore,
        TrustStore,
    )


#: The AWS SDK and its HTTP library print request headers (SigV4 signatures, session tokens) and response bodies
#: (a Secrets Manager `SecretString` with registry passwords) at DEBUG. Their loggers are pinned to WARNING, so
#: no root level (LOG_LEVEL, Lambda's ApplicationLogLevel=DEBUG, `-vv`) can make them print a secret.
SDK_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer")


def pin_sdk_loggers() -> None:
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


# Every entry point (the Lambda handler, every CLI command that reaches AWS) imports this module before boto3.
pin_sdk_loggers()


def credentials(options: RegistrySettings, *, secret_text: str | None = None) -> CredentialProvider:
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


def registry_client(options: RegistrySettings, *, secret_text: str | None = None) -> RegistryClient:
    from audit.adapters.registry import RegistryClient  # noqa: PLC0415 - deferred: see the module docstring

    return RegistryClient(options, credentials(options, secret_text=secret_text))


def package_index(
    options: RegistrySettings, *, secret_text: str | None = None, netrc: bool | None = None
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
    if options.netrc if netrc is None else netrc:
        providers.append(NetrcCredentials())
    providers.append(CodeArtifactCredentials())
    settings = IndexSettings(
        insecure_hosts=options.insecure_registries,
        ca_file=options.ca_file,
        timeout=options.timeout,
        user_agent=options.user_agent,
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


def trust_store(trust_file: Path | None, config: Settings, *, create: bool = False) -> TrustStore:
    """`--trust-file` for people without AWS, else the DynamoDB table named by TRUSTED_DIGESTS_TABLE.

    `create`: a missing file is a new, empty store (recording); otherwise it is an error (auditing).
    """
    from audit.adapters.dynamodb_store import DynamoTrustStore  # noqa: PLC0415 - deferred, see above
    from audit.adapters.file_store import FileTrustStore  # noqa: PLC0415

    if trust_file is not None:
        return FileTrustStore(store_file(trust_file, flag="--trust-file", create=create))
    table = require(config.stores.trust_table, what="trust store", variable=ENV_TRUST_TABLE, flag="--trust-file FILE")
    return DynamoTrustStore(table, dynamodb_client())


def state_store(state_file: Path | None, config: Settings) -> StateStore:
    from audit.adapters.dynamodb_store import DynamoStateStore  # noqa: PLC0415 - deferred, see above
    from audit.adapters.file_store import FileStateStore  # noqa: PLC0415

    if state_file is not None:
        # The state file starts empty on a first run; it only needs a directory to live in.
        return FileStateStore(store_file(state_file, flag="--state-file", create=True))
    table = _state_table(config)
    return DynamoStateStore(table, dynamodb_client(), max_attempts=DYNAMODB_MAX_ATTEMPTS, backoff=aws_backoff)


def _state_table(config: Settings) -> str:
    return require(
        config.stores.state_table, what="audit state store", variable=ENV_STATE_TABLE, flag="--state-file FILE"
    )


def run_lease(state_file: Path | None, config: Settings) -> RunLease:
    """The run lease lives where the state lives: next to the state file, or in the state table."""
    from audit.adapters.dynamodb_store import DynamoRunLease  # noqa: PLC0415 - deferred, see above
    from audit.adapters.file_store import FileRunLease  # noqa: PLC0415

    if state_file is not None:
        return FileRunLease(state_file)
    table = _state_table(config)
    return DynamoRunLease(table, dynamodb_client(), duration=config.stores.lease_duration)


def sns_alerts(config: Settings) -> SnsAlerts:
    from audit.adapters.sns_alerts import SnsAlerts  # noqa: PLC0415 - deferred, see above

    topic = require(config.alerts.topic_arn, what="alert topic", variable=ENV_TOPIC_ARN, flag="--print-alerts")
    return SnsAlerts(topic, sns_client(), entry_attempts=SNS_ENTRY_ATTEMPTS, backoff=aws_backoff)


def image_name(text: str) -> str:
    """`registry/repository` of a repository name as a person types it (`openzaak/open-zaak`, `pypi:mylib`)."""
    if is_package_spec(text):
        from audit.packages import package_image_name  # noqa: PLC0415 - an image's `check` loads no package side

        return package_image_name(text)
    return ImageRef.parse(text).image


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
def ci_log_source(origin: CiLogOrigin, tokens: CiSettings, *, notify: Callable[[str], None]) -> Iterator[CiLogSource]:
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
        token = tokens.github_token
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
        token = tokens.gitlab_token
        headers = {"PRIVATE-TOKEN": token} if token else {}
        http = CiHttp(origin.api_url or GITLAB_API_URL, token_headers=headers, max_wait=origin.max_wait, notify=notify)
        source = GitLabJobs(http, origin.gitlab or "", max_jobs=origin.max_runs, notify=notify)
    try:
        yield source
    finally:
        http.close()


class Overrides(TypedDict, total=False):
    """What `build` may be given instead of what it would build from settings (tests, the bench, the demo)."""

    trust: TrustStore
    state: StateStore
    lease: RunLease
    alerts: Alerts
    registry: Registry
    packages: PackageIndex
    manifests: ManifestReader
    provisioning: Provisioning
    clock: Callable[[], datetime]  # default: utcnow
    sleep: Callable[[float], Awaitable[None]]  # default: asyncio.sleep
    should_start: Callable[[], bool]  # default: always (the Lambda passes its remaining-time guard)
    secret_text: str | Callable[[], str | None] | None  # the registry credentials secret, or how to read it
    alert_stream: TextIO  # where printed alerts go (default: stdout)


class App:
    """The composed application: settings and every port, each adapter built on first use and then kept.

    Built by `build`; the CLI uses one per command (`async with app:` closes the HTTP clients it built), the
    Lambda one per warm container (`lambda_app`), with one event loop for the container's lifetime: the httpx
    connection pools belong to a loop, so tokens and connections survive between scheduled runs.
    """

    def __init__(self, settings: Settings, **overrides: Unpack[Overrides]) -> None:
        self.settings = settings
        self._trust = overrides.get("trust")
        self._recorder: TrustStore | None = None
        self._state = overrides.get("state")
        self._lease = overrides.get("lease")
        self._alerts = overrides.get("alerts")
        self._registry = overrides.get("registry")
        self._packages = overrides.get("packages")
        self._manifests = overrides.get("manifests")
        self._provisioning = overrides.get("provisioning")
        self._client: RegistryClient | None = None
        self.clock = overrides.get("clock", utcnow)
        self._sleep = overrides.get("sleep")
        self._should_start = overrides.get("should_start")
        self._secret_source = overrides.get("secret_text")
        self._secret_read = False
        self._secret_text: str | None = None
        self._alert_stream = overrides.get("alert_stream")
        self._built_clients: list[RegistryClient | PackageIndexClient] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- the ports ------------------------------------------------------------------------------------------
    @property
    def trust(self) -> TrustStore:
        """The trust store an audit reads: `--trust-file` (it must exist) or the trust table."""
        if self._trust is None:
            self._trust = trust_store(self.settings.stores.trust_file, self.settings)
        return self._trust

    @property
    def recorder(self) -> TrustStore:
        """The trust store a recorder writes (`record`, `watch`, `trust import`): a missing `--trust-file` is a
        new, empty store here, where an audit refuses it."""
        if self._trust is not None:
            return self._trust
        if self._recorder is None:
            self._recorder = trust_store(self.settings.stores.trust_file, self.settings, create=True)
        return self._recorder

    @property
    def state(self) -> StateStore:
        if self._state is None:
            self._state = state_store(self.settings.stores.state_file, self.settings)
        return self._state

    @property
    def lease(self) -> RunLease:
        if self._lease is None:
            self._lease = run_lease(self.settings.stores.state_file, self.settings)
        return self._lease

    @property
    def alerts(self) -> Alerts:
        """Printed (local runs, `--print-alerts`, dry runs) or published to the SNS topic."""
        if self._alerts is None:
            if self.settings.alerts.print_alerts:
                from audit.adapters.sns_alerts import PrintAlerts  # noqa: PLC0415 - deferred, see the module docstring

                self._alerts = PrintAlerts(self._alert_stream or sys.stdout)
            else:
                self._alerts = sns_alerts(self.settings)
        return self._alerts

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = self._registry_client()
        return self._registry

    @property
    def manifests(self) -> ManifestReader:
        """Manifests by digest or tag (what `record` keeps as evidence): the same client as `registry`."""
        if self._manifests is None:
            self._manifests = self._registry_client()
        return self._manifests

    def _registry_client(self) -> RegistryClient:
        if self._client is None:
            self._client = registry_client(self.settings.registry, secret_text=self._secret())
            self._built_clients.append(self._client)
        return self._client

    @property
    def optional_state(self) -> StateStore | None:
        """The audit state where one is configured (`--state-file` or the state table), else None: `report`
        shows evidence without audit results rather than refusing."""
        stores = self.settings.stores
        if self._state is None and stores.state_file is None and not stores.state_table:
            return None
        return self.state

    @property
    def provisioning(self) -> Provisioning:
        if self._provisioning is None:
            self._provisioning = provisioning()
        return self._provisioning

    def ci_logs(self, origin: CiLogOrigin, *, notify: Callable[[str], None]) -> AbstractContextManager[CiLogSource]:
        """Where `trust backfill` reads CI logs (its HTTP client closed when the `with` block ends)."""
        return ci_log_source(origin, self.settings.ci, notify=notify)

    @property
    def packages(self) -> PackageIndex:
        if self._packages is None:
            client = package_index(self.settings.registry, secret_text=self._secret())
            self._built_clients.append(client)
            self._packages = client
        return self._packages

    @property
    def policy(self) -> AlertPolicy:
        from audit.drift import AlertPolicy  # noqa: PLC0415 - deferred, see the module docstring

        return AlertPolicy(
            reminder_interval=self.settings.alerts.reminder_interval,
            unverifiable_after=self.settings.alerts.unverifiable_after,
        )

    def _secret(self) -> str | None:
        """The registry credentials secret's text, read once, only where the App was built to read it."""
        if not self._secret_read:
            source = self._secret_source
            self._secret_text = source() if callable(source) else source
            self._secret_read = True
        return self._secret_text

    # --- the use cases --------------------------------------------------------------------------------------
    def auditor(
        self,
        *,
        should_start: Callable[[], bool] | None = None,
        dry_run: bool = False,
        with_packages: bool = True,
    ) -> AuditService:
        """The audit use case over this App's ports. A dry run publishes and saves nothing, so it needs no lease
        (it may run beside another run); `should_start` also ends tag listing once time is short."""
        from audit.app.audit import AuditService  # noqa: PLC0415 - deferred, see the module docstring

        start = should_start or self._should_start
        return AuditService(
            self.trust,
            self.state,
            self.registry,
            self.alerts,
            alert_policy=self.policy,
            reverify_delay=self.settings.audit.reverify_delay,
            clock=self.clock,
            sleep=self._sleep or asyncio.sleep,
            should_start=start or (lambda: True),
            max_in_flight=self.settings.registry.check_workers,
            packages=self.packages if with_packages else None,
            lease=None if dry_run else self.lease,
            max_tags_per_repository=self.settings.audit.max_tags_per_repository,
        )

    def push_audit(self, *, should_start: Callable[[], bool] | None = None, with_packages: bool = True) -> PushAudit:
        """The targeted audit of the tags a batch of push events names (the Lambda's queue, `listen`)."""
        from audit.app.listen import PushAudit  # noqa: PLC0415 - deferred, see the module docstring

        return PushAudit(self.trust, lambda: self.auditor(should_start=should_start, with_packages=with_packages))

    def prepare(self) -> Self:
        """Build every port the audit uses now, so a configuration error surfaces here, not mid-run."""
        _ = (self.registry, self.packages, self.trust, self.state, self.lease, self.alerts)
        return self

    # --- lifetime -------------------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the HTTP clients this App built (ports passed in belong to whoever passed them)."""
        clients, self._built_clients = self._built_clients, []
        for client in clients:
            await client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def run_blocking[T](self, work: Coroutine[Any, Any, T]) -> T:
        """Run on this App's own event loop (the Lambda container's), created on first use and kept."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(work)

    def close(self) -> None:
        """End this App's own loop: cancel what an interrupted invocation left on it, close the clients."""
        # Clients built but never used still hold a pool to close; a loop for that is made if none ran yet.
        loop, self._loop = self._loop or asyncio.new_event_loop(), None
        # An interrupted invocation may have left an audit suspended on this loop: cancel it, never resume it.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(self.aclose())
        loop.close()


def build(settings: Settings, **overrides: Unpack[Overrides]) -> App:
    """The one composition root. Every port may be given (tests pass in-memory fakes); what is not given is
    built from `settings` on first use."""
    return App(settings, **overrides)


_lambda_app: App | None = None


def lambda_app(env: Environment | Mapping[str, str] | None = None) -> App:
    """Built once per container (a deliberate warm cache); configuration errors surface on first use."""
    global _lambda_app  # noqa: PLW0603 - the documented per-container cache
    if _lambda_app is None:
        settings = Settings.from_environment(env)
        secret_id = settings.registry.credentials_secret
        app = build(settings, secret_text=(lambda: read_secret(secret_id)) if secret_id else None)
        _lambda_app = app.prepare()
    return _lambda_app


def reset_lambda_app() -> None:
    """Forget the cached app (tests, or after a configuration change)."""
    global _lambda_app  # noqa: PLW0603
    if _lambda_app is not None:
        _lambda_app.close()
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
