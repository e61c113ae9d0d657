"""`make demo`: CI records releases, a stolen push token swaps one, the scheduled Lambda alerts once; a second swap
is alerted from the registry's push event seconds after the push.

Everything runs on loopback: a real docker-registry with token auth that notifies the webhook receiver
(`receiver.lambda_handler` behind a local Function URL), moto in server mode (DynamoDB, SNS, SQS, Secrets
Manager), the `digest-audit` CLI as subprocesses (as CI runs it) and `handler.lambda_handler` in this process (as
the Lambda runtime calls it, on the schedule and with push-event batches). Run it with `uv run python -m demo.run`
from the project root.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

import receiver
from audit.hooks import CheckRequest
from demo.console import Console
from demo.services import (
    DUMMY_KEY,
    REGION,
    DemoError,
    DemoLambdaContext,
    Moto,
    aws_environment,
    isolate_from_real_aws,
    moto_server,
    processes_under,
    stop_own_children_under,
)
from tests.support.docker_config import write_docker_config
from tests.support.function_url import FunctionUrl, function_url
from tests.support.local_registry import LocalRegistry, local_registry
from tests.support.push_queue import PushQueue
from tests.support.pusher import ImageKind, PushedImage, Pusher
from tests.support.registry_process import DEFAULT_BINARY, Notifications, RegistryStartError

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient

PROJECT = Path(__file__).resolve().parent.parent
SCHEDULED_EVENT = PROJECT / "events" / "scheduled.json"

TRUST_TABLE = "digest-audit-trusted-digests"
STATE_TABLE = "digest-audit-audit-state"
TOPIC_NAME = "digest-audit-alerts"
QUEUE_NAME = "security-alerts"
EMAIL_ADDRESS = "security-team@example.com"
SECRET_NAME = "digest-audit/registry-credentials"  # noqa: S105 - a name, not a secret
REVERIFY_DELAY = "1"
#: The push-event queue, the webhook token's secret and the receiver's route (template.yaml's names, shortened).
PUSH_QUEUE_NAME = "digest-audit-push-events"
WEBHOOK_SECRET_NAME = "digest-audit/webhook-token"  # noqa: S105 - a name, not a secret
HOOK_ROUTE = "/hooks/distribution"
#: PushEventGraceSeconds: the template's default is 60 s; 2 s keeps the demo short.
GRACE_SECONDS = "2"
#: Bounds on waiting for the registry's notification and the queue (they take milliseconds and the grace).
QUEUE_DEADLINE_SECONDS = 30.0
#: The claim of the push-event chapter: a swap is alerted within a minute of the push, not at the next hour.
PUSH_ALERT_LIMIT_SECONDS = 60
#: SNS e-mail comes from this sender; the demo shows it in the headers of the e-mail it prints.
SNS_EMAIL_SENDER = "AWS Notifications <no-reply@sns.amazonaws.com>"

EXIT_FAILED = 1
EXIT_PREREQUISITE = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Release:
    repository: str
    tag: str
    kind: ImageKind
    platforms: tuple[str, ...] | None = None

    @property
    def label(self) -> str:
        return {
            "docker": "Docker v2 manifest",
            "oci": "OCI manifest",
            "oci-index": "OCI image index (multi-arch)",
            "docker-list": "Docker manifest list (multi-arch)",
        }[self.kind]


RELEASES = (
    Release("openzaak/open-zaak", "1.3.4", "docker"),
    Release("openzaak/open-zaak", "1.3.5", "oci"),
    Release("openzaak/open-zaak", "1.4.0", "oci-index", ("linux/amd64", "linux/arm64/v8")),
    Release("openzaak/open-notificaties", "1.5.0", "docker-list", ("linux/amd64", "linux/arm64/v8")),
)
#: The release the attacker replaces, and the one platform the backdoor goes into.
TARGET = RELEASES[2]
TARGET_PLATFORM = "linux/amd64"
#: The release swapped next, once the push-event queue has its consumer.
SECOND_TARGET = RELEASES[3]


#: The log line of a push-event batch that carries the run's summary (the batch returns only its failures).
PUSH_AUDIT_LOG_MESSAGE = "push event audit finished"


@dataclass(frozen=True)
class Invocation:
    summary: dict[str, Any]
    log_records: list[dict[str, Any]]
    metrics: dict[str, object]

    @property
    def run(self) -> dict[str, Any]:
        """The audit's summary: what a scheduled run returns, or what a push-event batch logs."""
        if "checked" in self.summary:
            return self.summary
        for record in self.log_records:
            if record.get("message") == PUSH_AUDIT_LOG_MESSAGE:
                return record
        return {}


@dataclass(frozen=True)
class Delivered:
    """One message as the SQS subscriber got it (the SNS envelope) and as SNS published it (every protocol)."""

    envelope: dict[str, Any]
    published: dict[str, str]
    subject: str


def ci_run_url(release: Release) -> str:
    run = int(hashlib.sha256(f"{release.repository}:{release.tag}".encode()).hexdigest()[:6], 16)
    return f"https://github.com/{release.repository}/actions/runs/{run}"


def commit_of(release: Release) -> str:
    return hashlib.sha1(f"{release.repository}@{release.tag}".encode(), usedforsecurity=False).hexdigest()


class Demo:
    """The story, one method per section; each checks what it claims and raises DemoError when it does not hold."""

    def __init__(self, console: Console, workdir: Path, stack: ExitStack, registry_binary: Path) -> None:
        self.out = console
        self.workdir = workdir
        self.stack = stack
        self.registry_binary = registry_binary
        self.pushed: dict[tuple[str, str], PushedImage] = {}
        self.cli_seconds = 0.0

    # --- 1. services ----------------------------------------------------------------------------------------

    def start_services(self) -> None:
        out = self.out
        out.section("Start an AWS emulator, the webhook receiver and a registry on loopback")
        out.fields([("work directory", f"{self.workdir} (removed at the end)")], width=len("work directory"))
        # moto and the receiver first: the registry notifies from its first push on, and delivers each event once.
        self.moto: Moto = self.stack.enter_context(moto_server())
        os.environ.update(aws_environment(self.moto, self.workdir))
        self.start_receiver()
        notifications = Notifications(url=f"{self.receiver.url}{HOOK_ROUTE}", token=self.webhook_token)
        try:
            self.registry: LocalRegistry = self.stack.enter_context(
                local_registry(
                    self.workdir / "registry",
                    auth="token",
                    binary=self.registry_binary,
                    notifications=notifications,
                )
            )
        except RegistryStartError as exc:
            raise DemoError(f"docker-registry did not start: {exc}") from None
        token_server = self.registry.token_server
        assert token_server is not None  # token mode always has one
        self.token_server = token_server
        pids = [pid for pid, command in processes_under(str(self.workdir)) if "docker-registry" in command]
        out.fields(
            [
                ("AWS emulator", f"{self.moto.endpoint_url}  (moto server: DynamoDB, SNS, SQS, Secrets Manager)"),
                ("receiver", f"{self.receiver.url}  (receiver.lambda_handler behind a local Function URL)"),
                ("registry", f"{self.registry.url}  (docker-registry pid {', '.join(map(str, pids)) or '?'})"),
                ("token realm", f"{token_server.realm}  (accounts: pusher = CI push, auditor = pull only)"),
            ],
            width=len("work directory"),
        )
        out.blank()
        out.say(
            "The receiver function's environment, as template.yaml sets it (the token's secret and the queue; "
            "no registry credentials, tables or topic):"
        )
        out.fields(sorted(self.receiver_env.items()))
        out.say("The registry's configuration names the receiver (README, Push events):")
        out.block(
            "notifications:\n"
            "  endpoints:\n"
            f"    - name: {notifications.name}\n"
            f"      url: {notifications.url}\n"
            "      headers:\n"
            "        Authorization: [Bearer <the webhook token, hidden>]\n"
            f"      timeout: {notifications.timeout}\n"
            f"      threshold: {notifications.threshold}\n"
            f"      backoff: {notifications.backoff}"
        )
        self.insecure = f"{self.registry.host},{token_server.host}"
        out.note(
            "Token auth over plain HTTP: both the registry and its token realm must be listed in "
            f"DIGEST_AUDIT_INSECURE_REGISTRIES ({self.insecure}); real registries use TLS and need nothing."
        )

    def start_receiver(self) -> None:
        """The webhook token in Secrets Manager, the push-event queue, and the receiver behind a Function URL."""
        session = self._session()
        endpoint = self.moto.endpoint_url
        secrets_manager: SecretsManagerClient = session.client(
            "secretsmanager", endpoint_url=endpoint, config=self._client_config()
        )
        self.webhook_token = secrets.token_urlsafe(36)
        token_arn = secrets_manager.create_secret(Name=WEBHOOK_SECRET_NAME, SecretString=self.webhook_token)["ARN"]
        sqs: SQSClient = session.client("sqs", endpoint_url=endpoint, config=self._client_config())
        queue_url = sqs.create_queue(QueueName=PUSH_QUEUE_NAME)["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.push_queue = PushQueue(sqs, queue_url, queue_arn, REGION)
        self.receiver_env = {
            receiver.ENV_QUEUE_URL: queue_url,
            receiver.ENV_GRACE: GRACE_SECONDS,
            receiver.ENV_SOURCES: "distribution",
            receiver.ENV_TOKEN_SECRET: token_arn,
        }
        os.environ.update(self.receiver_env)
        self.receiver: FunctionUrl = self.stack.enter_context(function_url(receiver.lambda_handler))

    # --- 2. CI pushes and records ---------------------------------------------------------------------------

    def push_releases(self) -> None:
        out = self.out
        out.section("CI builds and pushes four releases")
        pusher = self.registry.pusher
        for release in RELEASES:
            seed = f"{release.repository}:{release.tag}"
            image = pusher.push_image(release.repository, release.tag, release.kind, release.platforms, seed=seed)
            self.pushed[(release.repository, release.tag)] = image
            out.block(
                f"pushed {self.registry.reference(release.repository, release.tag)}  [{release.label}]", indent=""
            )
            out.block(f"digest {image.digest}")
            for platform, child in image.platforms.items():
                out.block(f"  {platform:<16} {child}")

    def ci_environment(self) -> tuple[dict[str, str], list[tuple[str, str]]]:
        """The CI job's environment: the recorder's AWS access, and `docker login` with the push credentials."""
        assert self.registry.pusher_credentials is not None
        docker_config = write_docker_config(
            self.workdir / "ci-docker-config", {self.registry.host: self.registry.pusher_credentials}
        )
        home = self.workdir / "ci-home"
        home.mkdir(exist_ok=True)
        shown = [
            ("TRUSTED_DIGESTS_TABLE", TRUST_TABLE),
            ("AUDIT_STATE_TABLE", STATE_TABLE),
            ("AWS_ENDPOINT_URL", self.moto.endpoint_url),
            ("AWS_REGION", REGION),
            ("DIGEST_AUDIT_INSECURE_REGISTRIES", self.insecure),
            ("DOCKER_CONFIG", str(docker_config)),
        ]
        env = {name: os.environ[name] for name in ("PATH", "LANG", "LC_ALL", "TMPDIR") if name in os.environ}
        env.update(aws_environment(self.moto, self.workdir))
        env.update(shown)
        env.update({"HOME": str(home), "GITHUB_ACTOR": "release-bot", "PYTHONPATH": str(PROJECT / "src")})
        return env, shown

    def cli(self, env: dict[str, str], *args: str) -> str:
        """Run `digest-audit ARGS` as a subprocess (exactly what CI types), print and return its stdout."""
        self.out.command(["digest-audit", *args])
        started = time.monotonic()
        try:
            finished = subprocess.run(  # noqa: S603 - our own interpreter and module, arguments built here
                [sys.executable, "-m", "audit", *args],
                env=env,
                cwd=self.workdir,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DemoError(f"`digest-audit {args[0]}` did not finish within 60 s") from None
        if finished.stdout.strip():
            self.out.block(finished.stdout, indent="")
        if finished.stderr.strip():
            self.out.block(finished.stderr, indent="")
        self.cli_seconds += time.monotonic() - started
        if finished.returncode != 0:
            raise DemoError(f"`digest-audit {args[0]}` exited with {finished.returncode}")
        return finished.stdout

    def record_releases(self) -> None:
        out = self.out
        out.section("CI records every trusted digest (digest-audit init, digest-audit record)")
        out.say(
            "Right after each push, the release job stores the digest it built, with the CI run URL and the "
            "commit. The trust table is the record that outlives CI logs. The job is logged in to the registry "
            "with its push credentials (docker login), which `record` also uses to read the platform digests."
        )
        env, shown = self.ci_environment()
        out.export(shown)
        init_output = self.cli(env, "init", "--topic", TOPIC_NAME)
        arns = [line.rpartition(" ")[2] for line in init_output.splitlines() if line.startswith("topic ready:")]
        if not arns:
            raise DemoError("`digest-audit init --topic` printed no topic ARN")
        self.topic_arn = arns[0]
        for release in RELEASES:
            image = self.pushed[(release.repository, release.tag)]
            reference = self.registry.reference(release.repository, release.tag, image.digest)
            self.cli(env, "record", reference, "--source", ci_run_url(release), "--commit", commit_of(release))
        self.ci_env = env

    # --- 3. subscribers and the Lambda's configuration ------------------------------------------------------

    def _client_config(self) -> Config:
        return Config(retries={"max_attempts": 2, "mode": "standard"})

    def _session(self) -> boto3.session.Session:
        return boto3.session.Session(aws_access_key_id=DUMMY_KEY, aws_secret_access_key=DUMMY_KEY, region_name=REGION)

    def subscribe(self) -> None:
        out = self.out
        out.section("Subscribers and the Lambda's configuration")
        session = self._session()
        endpoint = self.moto.endpoint_url
        self.sqs: SQSClient = session.client("sqs", endpoint_url=endpoint, config=self._client_config())
        self.sns: SNSClient = session.client("sns", endpoint_url=endpoint, config=self._client_config())
        secrets_manager: SecretsManagerClient = session.client(
            "secretsmanager", endpoint_url=endpoint, config=self._client_config()
        )
        self.queue_url = self.sqs.create_queue(QueueName=QUEUE_NAME)["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        self.sns.subscribe(TopicArn=self.topic_arn, Protocol="sqs", Endpoint=queue_arn)
        self.sns.subscribe(TopicArn=self.topic_arn, Protocol="email", Endpoint=EMAIL_ADDRESS)
        credentials = self.registry.credentials
        assert credentials is not None
        secret_value = {self.registry.host: {"username": credentials.username, "password": credentials.password}}
        secret_arn = secrets_manager.create_secret(Name=SECRET_NAME, SecretString=json.dumps(secret_value))["ARN"]
        out.fields(
            [
                ("SNS topic", self.topic_arn),
                ("  sqs subscriber", f"{queue_arn} (a SIEM or ticketing system reading machine JSON)"),
                ("  email subscriber", f"{EMAIL_ADDRESS} (moto cannot send mail; the published text is shown)"),
                ("registry secret", secret_arn),
                (
                    "  value",
                    f'{{"{self.registry.host}": {{"username": "{credentials.username}", "password": <hidden>}}}}',
                ),
            ]
        )
        self.lambda_env = {
            "TRUSTED_DIGESTS_TABLE": TRUST_TABLE,
            "AUDIT_STATE_TABLE": STATE_TABLE,
            "ALERT_TOPIC_ARN": self.topic_arn,
            "REGISTRY_CREDENTIALS_SECRET_ARN": secret_arn,
            "DIGEST_AUDIT_INSECURE_REGISTRIES": self.insecure,
            "DIGEST_AUDIT_REVERIFY_DELAY": REVERIFY_DELAY,
            "POWERTOOLS_SERVICE_NAME": "digest-audit",
            "POWERTOOLS_METRICS_NAMESPACE": "DigestAudit",
            "LOG_LEVEL": "INFO",
        }
        out.blank()
        out.say("The function's environment, as template.yaml sets it (the auditor only has pull rights):")
        out.fields(sorted(self.lambda_env.items()))
        # The Lambda has no docker login; an empty DOCKER_CONFIG keeps this machine's ~/.docker out of it.
        lambda_docker_config = self.workdir / "lambda-docker-config"
        lambda_docker_config.mkdir()
        os.environ.update(self.lambda_env)
        os.environ["DOCKER_CONFIG"] = str(lambda_docker_config)
        os.environ["HOME"] = str(self.workdir)

    # --- 4. the scheduled Lambda ----------------------------------------------------------------------------

    def load_handler(self) -> ModuleType:
        """Imported only now: Powertools reads its service name and namespace at import time."""
        import handler  # noqa: PLC0415 - the environment must be set first

        return handler

    def invoke(self, title: str, batch: dict[str, Any] | None = None) -> Invocation:
        """One invocation: the scheduled event, or an SQS `batch` of the push-event queue."""
        out = self.out
        request_id = str(uuid.uuid4())
        if batch is None:
            event = json.loads(SCHEDULED_EVENT.read_text())
            out.say(f"{title}: EventBridge Scheduler invokes the function with events/scheduled.json:")
            shown = json.dumps(event)
        else:
            event = batch
            count = len(batch["Records"])
            out.say(f"{title}: the SQS event source invokes the function with the {count} message(s) as one batch:")
            shown = f"<SQS batch: {count} record(s) from {PUSH_QUEUE_NAME}>"
        out.command(["handler.lambda_handler", shown, f"<context {request_id[:8]}>"])
        captured = io.StringIO()
        handler = self.handler
        # Powertools writes JSON logs and EMF metrics to stdout (CloudWatch Logs in Lambda); gather them here
        # so the transcript stays readable, then show what matters.
        log_handler = handler.logger.registered_handler
        previous = log_handler.setStream(captured) if isinstance(log_handler, logging.StreamHandler) else None
        try:
            with contextlib.redirect_stdout(captured):
                summary = handler.lambda_handler(event, DemoLambdaContext(request_id))
        except Exception as exc:
            self._show_logs(_parse_lines(captured.getvalue())[0])
            raise DemoError(f"the Lambda handler raised {type(exc).__name__}: {exc}") from exc
        finally:
            if isinstance(log_handler, logging.StreamHandler) and previous is not None:
                log_handler.setStream(previous)
        records, metrics = _parse_lines(captured.getvalue())
        out.say("It returns:" if batch is None else "It returns the partial batch response:")
        out.json_block(summary)
        self._show_logs(records)
        invocation = Invocation(summary, records, metrics)
        if batch is not None:
            run = invocation.run
            out.say(f"Its log line `{PUSH_AUDIT_LOG_MESSAGE}` carries the audit's summary:")
            out.json_block({key: run.get(key) for key in ("messages", "checked", "by_verdict", "alerts_published")})
        if metrics:
            out.block("metrics (CloudWatch EMF): " + ", ".join(f"{k}={v}" for k, v in metrics.items()), indent="")
        return invocation

    def _show_logs(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        self.out.block(f"CloudWatch Logs ({len(records)} JSON line(s)):", indent="")
        for record in records:
            extra = ""
            if record.get("level") in ("WARNING", "ERROR"):
                extra = f" {record.get('error', '')} {record.get('hint', '')}".rstrip()
            self.out.block(f"{record.get('level', '?'):<7} {record.get('message', '')}{extra}")

    def baseline(self) -> None:
        self.out.section("The hourly audit before the attack")
        self.handler = self.load_handler()
        run = self.invoke("Run 1")
        self.expect(run.summary.get("alerts_published") == 0, "run 1 published alerts although nothing changed")
        self.expect(run.summary.get("by_verdict") == {"match": len(RELEASES)}, "run 1 did not match every tag")
        self.expect(not self.receive(), "the queue received a message although nothing changed")
        self.out.ok(f"all {len(RELEASES)} tags serve their recorded digests; nobody is paged")
        self.run1 = run

    # --- 5. the attack --------------------------------------------------------------------------------------

    def attack(self) -> None:
        out = self.out
        out.section("The attack: a leaked CI push credential re-pushes a release tag")
        out.say(
            "As in the Codecov breach of 2021, a compromised CI step exfiltrated the release job's registry "
            "credentials. The attacker asks the token server for a push token with them and replaces the "
            f"{TARGET_PLATFORM} image of {TARGET.repository}:{TARGET.tag}, keeping the other platform, so "
            "`docker pull` on a laptop (arm64) still gets the genuine image."
        )
        self.swap(TARGET)

    def swap(self, release: Release) -> float:
        """The attacker replaces `release`'s TARGET_PLATFORM image; returns when the tag's push finished (monotonic)."""
        out = self.out
        original = self.pushed[(release.repository, release.tag)]
        attacker = self.registry.new_pusher(self.registry.pusher_credentials, fetch_tokens=True)
        seen = self.token_server.request_count
        replaced = _swap_platform(attacker, original, TARGET_PLATFORM)
        pushed_at = time.monotonic()
        for request in self.token_server.requests[seen:]:
            out.block(
                f"token server: {request.method} {request.path} as {request.username!r}, "
                f"scope {' '.join(request.scopes)} -> HTTP {request.status}",
                indent="",
            )
        out.fields(
            [
                ("tag", self.registry.reference(release.repository, release.tag)),
                ("recorded by CI", original.digest),
                ("served now", replaced.digest),
            ]
            + [
                (f"  {platform}", f"{original.platforms[platform]} -> {digest}")
                for platform, digest in replaced.platforms.items()
                if original.platforms.get(platform) != digest
            ],
            indent="",
        )
        return pushed_at

    # --- 6. the alert ---------------------------------------------------------------------------------------

    def detect(self) -> None:
        out = self.out
        out.section("The next hourly audit notices, and alerts once")
        run = self.invoke("Run 2")
        target_ref = self.registry.reference(TARGET.repository, TARGET.tag)
        self.expect(run.summary.get("alerts_published") == 1, "run 2 did not publish exactly one alert")
        self.expect(run.summary.get("by_verdict", {}).get("drift") == 1, "run 2 did not find exactly one drift")
        messages = self.receive()
        self.expect(len(messages) == 1, f"the queue received {len(messages)} messages, expected 1")
        delivered = messages[0]
        machine = json.loads(delivered.envelope["Message"])
        references = [finding["reference"] for finding in machine.get("findings", [])]
        statuses = {finding["status"] for finding in machine.get("findings", [])}
        self.expect(references == [target_ref] and statuses == {"drift"}, f"the alert names {references}")
        self.show_sqs(delivered, machine)
        self.show_email(delivered)
        self.alerted = references
        self.run2 = run

    def receive(self) -> list[Delivered]:
        """Everything waiting in the subscriber queue (moto delivers synchronously), paired with what SNS sent."""
        sent = self._sent_notifications()
        delivered: list[Delivered] = []
        while True:
            batch = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            messages = batch.get("Messages", [])
            if not messages:
                return delivered
            for message in messages:
                envelope = json.loads(message["Body"])
                published = sent.get(envelope["MessageId"])
                if published is None:
                    raise DemoError(f"SNS has no record of message {envelope['MessageId']}")
                delivered.append(Delivered(envelope, json.loads(published[0]), published[1]))
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])

    def _sent_notifications(self) -> dict[str, tuple[str, str]]:
        """What SNS accepted from PublishBatch, read from moto's backend (the server runs in this process)."""
        from moto.sns.models import sns_backends  # noqa: PLC0415 - moto internals, only here

        _, _, _, region, account, _ = self.topic_arn.split(":")
        topic = sns_backends[account][region].topics[self.topic_arn]
        return {str(entry[0]): (str(entry[1]), str(entry[2] or "")) for entry in topic.sent_notifications}

    def sent_count(self) -> int:
        return len(self._sent_notifications())

    def show_sqs(self, delivered: Delivered, machine: object) -> None:
        out = self.out
        out.blank()
        out.say(
            f"(a) What the SQS subscriber {QUEUE_NAME} receives: the SNS envelope (Subject and MessageAttributes "
            "for routing and filter policies; Signature shortened here) whose Message is the `sqs` text of the "
            "JSON-structured message:"
        )
        shown = dict(delivered.envelope)
        shown["Message"] = "<the sqs text: machine JSON, decoded below>"
        if isinstance(shown.get("Signature"), str) and len(shown["Signature"]) > 24:
            shown["Signature"] = shown["Signature"][:24] + "..."
        out.json_block(shown)
        out.say("Message, decoded:")
        out.json_block(machine)

    def show_email(self, delivered: Delivered) -> None:
        out = self.out
        out.blank()
        out.say(
            f"(b) What {EMAIL_ADDRESS} reads: SNS e-mail delivery sends the Subject and the `email` text of the "
            "same published message (taken from what SNS accepted; SNS adds an unsubscribe footer):"
        )
        email = delivered.published.get("email")
        if email is None:
            raise DemoError("the published message has no `email` text")
        out.block(f"From: {SNS_EMAIL_SENDER}\nTo: {EMAIL_ADDRESS}\nSubject: {delivered.subject}")
        out.blank()
        out.block(email)
        chat = delivered.published.get("https")
        if chat is not None:
            title = json.loads(chat).get("content", {}).get("title", "")
            out.blank()
            out.note(f"Slack/Teams (AWS Chatbot, `https` text) shows a custom notification titled: {title}")

    # --- 7. no duplicate ------------------------------------------------------------------------------------

    def repeat(self) -> None:
        out = self.out
        out.section("An hour later: the drift persists, nobody is paged twice")
        before = self.sent_count()
        run = self.invoke("Run 3")
        messages = self.receive()
        self.expect(run.summary.get("by_verdict", {}).get("drift") == 1, "run 3 no longer sees the drift")
        self.expect(run.summary.get("alerts_published") == 0, "run 3 published the alert again")
        self.expect(not messages and self.sent_count() == before, "the subscriber received a duplicate")
        out.ok(
            "no duplicate: 0 messages published, 0 new messages in the queue. The audit state table remembers "
            "the alert; a reminder follows after DIGEST_AUDIT_REMINDER_INTERVAL (24 h), and a `resolved` notice "
            "when the tag serves the trusted digest again."
        )
        self.run3 = run

    # --- 8. push events -------------------------------------------------------------------------------------

    def push_events(self) -> None:
        out = self.out
        out.section("Push events: the next swap is caught seconds after the push, not at the next hour")
        statuses = self.receiver.seen()
        out.say(
            "Since it started, the registry has sent a notification for every push and pull to the receiver "
            f"({statuses.count(202)} answered 202 accepted, {statuses.count(204)} answered 204 ignored: blobs, "
            "child manifests pushed by digest, pulls). For each pushed tag the receiver verified the bearer token "
            f"and queued one check request, delayed by the grace ({GRACE_SECONDS} s) so that CI can record the digest "
            "first. The queue had no consumer until now: the demo connects the audit function to it here, as its "
            "SQS event source would."
        )
        self.expect(set(statuses) <= {202, 204}, f"the receiver refused deliveries: {sorted(set(statuses))}")
        self.consume_queued()
        self.catch_next_swap()
        self.next_hour()

    def consume_queued(self) -> None:
        """(a) The events of CI's pushes and of the first swap: CI's records match, the swap was already alerted."""
        out = self.out
        out.blank()
        out.say(f"(a) The queue holds the events of CI's {len(RELEASES)} release pushes and of the first swap:")
        pushes = len(RELEASES) + 1
        batch = self.push_queue.poll(expect=pushes, deadline_seconds=QUEUE_DEADLINE_SECONDS, take_visible=True)
        requests = self.show_batch(batch)
        pushed_tags = {(f"{self.registry.host}/{release.repository}", release.tag) for release in RELEASES}
        # A delivery the registry retried (its 2 s timeout passed under load) is queued twice; one check per tag.
        self.expect(
            len(requests) >= pushes and {(r.image, r.tag) for r in requests} == pushed_tags,
            f"the queue held {len(requests)} check requests, expected one for each of the {pushes} pushes",
        )
        before = self.sent_count()
        invocation = self.invoke("Batch 1", batch)
        self.push_queue.delete(batch, invocation.summary)
        run = invocation.run
        self.expect(invocation.summary == {"batchItemFailures": []}, "batch 1 returned messages to the queue")
        self.expect(
            run.get("by_verdict") == {"match": len(RELEASES) - 1, "drift": 1},
            f"batch 1 found {run.get('by_verdict')}, expected the swapped tag drifted and the others matching",
        )
        self.expect(run.get("alerts_published") == 0, "batch 1 alerted the first swap again")
        self.expect(not self.receive() and self.sent_count() == before, "the subscriber received a duplicate")
        out.ok(
            f"CI recorded each release seconds after its push, before its message was consumed: "
            f"{len(RELEASES) - 1} match. {TARGET.repository}:{TARGET.tag} is drift, already alerted by run 2 "
            "(same state, same dedup): no duplicate."
        )
        self.batch1 = invocation

    def catch_next_swap(self) -> None:
        """(b) A second swap: notification, grace, one batch, one alert; how long from the push to the alert."""
        out = self.out
        out.blank()
        out.say(
            f"(b) The attacker, still holding the leaked credential, swaps {TARGET_PLATFORM} of "
            f"{SECOND_TARGET.repository}:{SECOND_TARGET.tag} too. This time the function is connected to the queue:"
        )
        seen = len(self.receiver.seen())
        pushed_at = self.swap(SECOND_TARGET)
        accepted_after = self._wait_for_accepted(seen)
        counts = self.push_queue.counts()
        out.block(
            f"registry -> receiver {HOOK_ROUTE}: 202 accepted {accepted_after:.1f} s after the push; "
            f"queue: {counts['delayed']} message(s) waiting out the grace, {counts['visible']} visible",
            indent="",
        )
        batch = self.push_queue.poll(expect=1, deadline_seconds=QUEUE_DEADLINE_SECONDS, take_visible=True)
        out.say(f"After the grace the SQS event source receives ({time.monotonic() - pushed_at:.1f} s after the push):")
        requests = self.show_batch(batch)
        second = (f"{self.registry.host}/{SECOND_TARGET.repository}", SECOND_TARGET.tag)
        self.expect(
            bool(requests) and {(r.image, r.tag) for r in requests} == {second},
            f"the queue held {len(requests)} check request(s), expected one for the swapped tag",
        )
        before = self.sent_count()
        invocation = self.invoke("Batch 2", batch)
        messages = self.receive()
        alert_seconds = time.monotonic() - pushed_at
        self.push_queue.delete(batch, invocation.summary)
        run = invocation.run
        target_ref = self.registry.reference(SECOND_TARGET.repository, SECOND_TARGET.tag)
        self.expect(invocation.summary == {"batchItemFailures": []}, "batch 2 returned its message to the queue")
        self.expect(run.get("by_verdict") == {"drift": 1}, f"batch 2 found {run.get('by_verdict')}, expected 1 drift")
        self.expect(run.get("alerts_published") == 1, "batch 2 did not publish exactly one alert")
        self.expect(
            len(messages) == 1 and self.sent_count() == before + 1,
            f"the subscriber received {len(messages)} messages, expected 1",
        )
        machine = json.loads(messages[0].envelope["Message"])
        findings = machine.get("findings", [])
        references = [finding["reference"] for finding in findings]
        statuses = {finding["status"] for finding in findings}
        self.expect(references == [target_ref] and statuses == {"drift"}, f"the alert names {references}")
        time_to_detect = invocation.metrics.get("TimeToDetect")
        self.expect(isinstance(time_to_detect, int | float), "batch 2 emitted no TimeToDetect metric")
        assert isinstance(time_to_detect, int | float)
        self.expect(
            alert_seconds < PUSH_ALERT_LIMIT_SECONDS,
            f"the alert came {alert_seconds:.1f} s after the push, not within {PUSH_ALERT_LIMIT_SECONDS} s",
        )
        out.blank()
        out.say(f"The SQS subscriber {QUEUE_NAME} (and {EMAIL_ADDRESS}) receive one alert:")
        out.fields(
            [("Subject", messages[0].envelope.get("Subject", "")), ("reason", findings[0].get("reason", ""))],
        )
        out.fields(
            [
                ("time to detect", f"{alert_seconds:.1f} s from the push to the alert in the subscriber queue"),
                ("TimeToDetect", f"{time_to_detect:.1f} s (the metric: the registry's event time to the publish)"),
            ],
            indent="",
        )
        out.ok(
            f"the swap was alerted {alert_seconds:.1f} s after the push ({GRACE_SECONDS} s of it the grace, "
            f"{REVERIFY_DELAY} s the re-verify delay), not at the next hour."
        )
        self.batch2 = invocation
        self.push_alerted = references
        self.push_alert_seconds = alert_seconds
        self.time_to_detect = float(time_to_detect)

    def _wait_for_accepted(self, seen: int) -> float:
        """Seconds until the receiver accepted a delivery after the first `seen` (the registry notifies async)."""
        started = time.monotonic()
        while 202 not in self.receiver.seen()[seen:]:
            if time.monotonic() - started > QUEUE_DEADLINE_SECONDS:
                raise DemoError(
                    f"the registry's notification did not reach the receiver within {QUEUE_DEADLINE_SECONDS} s "
                    f"(answers since the push: {self.receiver.seen()[seen:]})"
                )
            time.sleep(0.02)
        return time.monotonic() - started

    def show_batch(self, batch: dict[str, Any]) -> list[CheckRequest]:
        """Each queued check request as the receiver wrote it: source, action, tag, digest and the event's time."""
        requests: list[CheckRequest] = []
        for record in batch["Records"]:
            request = CheckRequest.from_message(record["body"])
            requests.append(request)
            pushed = request.event_time.strftime("%H:%M:%S.%f")[:-3] if request.event_time else "?"
            self.out.block(f"{request.display}  (event time {pushed})")
        return requests

    def next_hour(self) -> None:
        """(c) The scheduled run sees both drifts and sends nothing: the push-event alert is its alert too."""
        out = self.out
        out.blank()
        out.say("(c) At the next hour, the schedule runs as always:")
        before = self.sent_count()
        run = self.invoke("Run 4")
        messages = self.receive()
        self.expect(
            run.summary.get("by_verdict") == {"drift": 2, "match": len(RELEASES) - 2},
            f"run 4 found {run.summary.get('by_verdict')}, expected both swapped tags drifted",
        )
        self.expect(run.summary.get("alerts_published") == 0, "run 4 published an alert again")
        self.expect(not messages and self.sent_count() == before, "the subscriber received a duplicate")
        out.ok("no duplicate: both drifts persist, both were alerted once; 0 messages published.")
        self.run4 = run

    # --- 9. the evidence ------------------------------------------------------------------------------------

    def report(self) -> None:
        out = self.out
        out.section("The evidence table for the incident (digest-audit report)")
        table = self.cli(self.ci_env, "report", "--format", "table")
        for release in (TARGET, SECOND_TARGET):
            rows = [line for line in table.splitlines() if f" {release.tag} " in line and release.repository in line]
            self.expect(
                bool(rows) and " drift " in rows[0], f"the report does not show {release.repository}:{release.tag}"
            )

    def summary(self) -> None:
        out = self.out
        out.section("Summary")
        for name, invocation in (
            ("run 1 (before the attack)", self.run1),
            ("run 2 (after the attack)", self.run2),
            ("run 3 (an hour later)", self.run3),
            ("batch 1 (queued events)", self.batch1),
            ("batch 2 (the second swap)", self.batch2),
            ("run 4 (the next hour)", self.run4),
        ):
            run = invocation.run
            verdicts = ", ".join(f"{count} {verdict}" for verdict, count in sorted(run["by_verdict"].items()))
            messages = f"{run['messages']} message(s), " if "messages" in run else ""
            out.block(
                f"{name + ':':<28}{messages}{run['checked']} checked ({verdicts}), "
                f"{run['alerts_published']} alert(s) published",
                indent="",
            )
        out.block(f"{'alerted:':<28}{', '.join(self.alerted)} (drift)", indent="")
        out.block(
            f"{'alerted from a push event:':<28}{', '.join(self.push_alerted)} (drift), "
            f"{self.push_alert_seconds:.1f} s after the push (TimeToDetect {self.time_to_detect:.1f} s)",
            indent="",
        )
        out.block(f"{'duplicates:':<28}none", indent="")
        out.block(f"{'CLI subprocesses:':<28}{self.cli_seconds:.1f} s in total", indent="")

    @staticmethod
    def expect(condition: bool, failure: str) -> None:
        if not condition:
            raise DemoError(failure)

    def run(self) -> None:
        self.start_services()
        self.push_releases()
        self.record_releases()
        self.subscribe()
        self.baseline()
        self.attack()
        self.detect()
        self.repeat()
        self.push_events()
        # Close the warm container's HTTP clients and loop here, not on an interrupted path: there the loop still
        # holds the interrupted audit, and bootstrap.reset_lambda_app() would resume it against stopped services.
        _forget_lambda_app()
        self.report()
        self.summary()


def _swap_platform(attacker: Pusher, original: PushedImage, platform: str) -> PushedImage:
    """Re-push the index of `original` under its tag with one platform's image replaced by a new one."""
    assert original.tag is not None
    index = json.loads(original.manifest)
    child_kind: ImageKind = "oci" if original.media_type.value.startswith("application/vnd.oci") else "docker"
    child = attacker.push_image(original.repository, None, child_kind, [platform], seed="backdoor")
    platforms = dict(original.platforms)
    for entry in index["manifests"]:
        if entry["digest"] == original.platforms[platform]:
            entry.update({"mediaType": child.media_type.value, "size": child.size, "digest": child.digest})
    platforms[platform] = child.digest
    manifest = json.dumps(index, indent=3).encode()
    digest = attacker.push_manifest(original.repository, original.tag, manifest, original.media_type.value)
    return PushedImage(original.repository, original.tag, digest, original.media_type, manifest, platforms)


def _parse_lines(text: str) -> tuple[list[dict[str, Any]], dict[str, object]]:
    """Split captured Lambda stdout into log records and EMF metrics (name -> value)."""
    records: list[dict[str, Any]] = []
    metrics: dict[str, object] = {}
    for line in text.splitlines():
        try:
            document = json.loads(line)
        except json.JSONDecodeError:
            records.append({"level": "STDOUT", "message": line})
            continue
        if not isinstance(document, dict):
            continue
        emf = document.get("_aws")
        if isinstance(emf, dict):
            for directive in emf.get("CloudWatchMetrics", []):
                for metric in directive.get("Metrics", []):
                    value = document.get(metric["Name"])
                    metrics[metric["Name"]] = _number(
                        value[0] if isinstance(value, list) and len(value) == 1 else value
                    )
        else:
            records.append(document)
    return records, metrics


def _number(value: object) -> object:
    """EMF carries floats; 4.0 reads better as 4."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


@contextlib.contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    """`make` and CI stop jobs with SIGTERM: turn it into an exception so every finally block still runs."""

    def stop(signum: int, frame: FrameType | None) -> None:
        # Once: a second SIGTERM must not interrupt the clean-up the first one started.
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.run", description=__doc__)
    parser.add_argument(
        "--registry-binary",
        type=Path,
        default=DEFAULT_BINARY,
        help=f"docker-registry to run (default {DEFAULT_BINARY})",
    )
    args = parser.parse_args(argv)
    console = Console(sys.stdout)
    if not (args.registry_binary.is_file() and os.access(args.registry_binary, os.X_OK)):
        console.failure(
            f"{args.registry_binary} not found. The demo runs the CNCF distribution registry: "
            "`sudo apt-get install docker-registry` (Debian/Ubuntu), then `make demo` again.",
            sys.stderr,
        )
        return EXIT_PREREQUISITE

    started = time.monotonic()
    isolate_from_real_aws(os.environ)
    workdir = Path(tempfile.mkdtemp(prefix="digest-audit-demo-"))
    code = 0
    strays: list[int] = []
    leftovers: list[tuple[int, str]] = []
    try:
        with _terminate_on_sigterm():
            try:
                with ExitStack() as stack:
                    Demo(console, workdir, stack, args.registry_binary).run()
                    console.section("Clean-up")
            finally:
                # The stack stopped everything it knew of; a child whose start was interrupted is stopped here.
                strays = stop_own_children_under(str(workdir))
                leftovers = processes_under(str(workdir))
    except DemoError as exc:
        console.failure(str(exc), sys.stderr)
        code = EXIT_FAILED
    except KeyboardInterrupt:
        console.failure("interrupted; everything the demo started was stopped", sys.stderr)
        code = EXIT_INTERRUPTED
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if leftovers:
        console.failure(f"processes left running: {leftovers}", sys.stderr)
        return code or EXIT_FAILED
    if strays and code == 0:
        console.failure(f"child processes were still running at the end: pids {strays}", sys.stderr)
        return EXIT_FAILED
    if code != 0:
        return code
    console.fields(
        [
            ("stopped", "docker-registry, token server, receiver (Function URL), moto server"),
            ("left running", "nothing (no process under the work directory)"),
            ("removed", str(workdir)),
        ],
        indent="",
    )
    console.close_section()
    console.blank()
    console.block("timing:", indent="")
    console.fields([(title, f"{seconds:5.1f} s") for title, seconds in console.timings])
    console.block(f"done in {time.monotonic() - started:.1f} s", indent="")
    return 0


def _forget_lambda_app() -> None:
    """Close the warm Lambda app's HTTP clients and event loop, if the handler ever ran."""
    bootstrap = sys.modules.get("audit.bootstrap")
    if bootstrap is not None:
        bootstrap.reset_lambda_app()


if __name__ == "__main__":
    raise SystemExit(main())
