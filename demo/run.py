"""`make demo`: CI records releases, a stolen push token swaps one, the scheduled Lambda alerts once.

Everything runs on loopback: a real docker-registry with token auth, moto in server mode (DynamoDB, SNS, SQS,
Secrets Manager), the `digest-audit` CLI as subprocesses (as CI runs it) and `handler.lambda_handler` in this
process (as the Lambda runtime calls it). Run it with `uv run python -m demo.run` from the project root.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
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
from tests.support.local_registry import LocalRegistry, local_registry
from tests.support.pusher import ImageKind, PushedImage, Pusher
from tests.support.registry_process import DEFAULT_BINARY, RegistryStartError

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


@dataclass(frozen=True)
class Invocation:
    summary: dict[str, Any]
    log_records: list[dict[str, Any]]
    metrics: dict[str, object]


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
        out.section("Start a registry and an AWS emulator on loopback")
        out.fields([("work directory", f"{self.workdir} (removed at the end)")], width=len("work directory"))
        try:
            self.registry: LocalRegistry = self.stack.enter_context(
                local_registry(self.workdir / "registry", auth="token", binary=self.registry_binary)
            )
        except RegistryStartError as exc:
            raise DemoError(f"docker-registry did not start: {exc}") from None
        token_server = self.registry.token_server
        assert token_server is not None  # token mode always has one
        self.token_server = token_server
        pids = [pid for pid, command in processes_under(str(self.workdir)) if "docker-registry" in command]
        self.moto: Moto = self.stack.enter_context(moto_server())
        os.environ.update(aws_environment(self.moto, self.workdir))
        out.fields(
            [
                ("registry", f"{self.registry.url}  (docker-registry pid {', '.join(map(str, pids)) or '?'})"),
                ("token realm", f"{token_server.realm}  (accounts: pusher = CI push, auditor = pull only)"),
                ("AWS emulator", f"{self.moto.endpoint_url}  (moto server: DynamoDB, SNS, SQS, Secrets Manager)"),
            ],
            width=len("work directory"),
        )
        self.insecure = f"{self.registry.host},{token_server.host}"
        out.note(
            "Token auth over plain HTTP: both the registry and its token realm must be listed in "
            f"DIGEST_AUDIT_INSECURE_REGISTRIES ({self.insecure}); real registries use TLS and need nothing."
        )

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
        secrets: SecretsManagerClient = session.client(
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
        secret_arn = secrets.create_secret(Name=SECRET_NAME, SecretString=json.dumps(secret_value))["ARN"]
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

    def invoke(self, title: str) -> Invocation:
        out = self.out
        event = json.loads(SCHEDULED_EVENT.read_text())
        request_id = str(uuid.uuid4())
        out.say(f"{title}: EventBridge Scheduler invokes the function with events/scheduled.json:")
        out.command(["handler.lambda_handler", json.dumps(event), f"<context {request_id[:8]}>"])
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
        out.say("It returns:")
        out.json_block(summary)
        self._show_logs(records)
        if metrics:
            out.block("metrics (CloudWatch EMF): " + ", ".join(f"{k}={v}" for k, v in metrics.items()), indent="")
        return Invocation(summary, records, metrics)

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
        original = self.pushed[(TARGET.repository, TARGET.tag)]
        attacker = self.registry.new_pusher(self.registry.pusher_credentials, fetch_tokens=True)
        seen = self.token_server.request_count
        replaced = _swap_platform(attacker, original, TARGET_PLATFORM)
        for request in self.token_server.requests[seen:]:
            out.block(
                f"token server: {request.method} {request.path} as {request.username!r}, "
                f"scope {' '.join(request.scopes)} -> HTTP {request.status}",
                indent="",
            )
        out.fields(
            [
                ("tag", self.registry.reference(TARGET.repository, TARGET.tag)),
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

    # --- 8. the evidence ------------------------------------------------------------------------------------

    def report(self) -> None:
        out = self.out
        out.section("The evidence table for the incident (digest-audit report)")
        table = self.cli(self.ci_env, "report", "--format", "table")
        drifted = [line for line in table.splitlines() if f" {TARGET.tag} " in line and TARGET.repository in line]
        self.expect(bool(drifted) and " drift " in drifted[0], "the report does not show the drifted tag")

    def summary(self) -> None:
        out = self.out
        out.section("Summary")
        for name, run in (
            ("run 1 (before the attack)", self.run1),
            ("run 2 (after the attack)", self.run2),
            ("run 3 (an hour later)", self.run3),
        ):
            verdicts = ", ".join(f"{count} {verdict}" for verdict, count in sorted(run.summary["by_verdict"].items()))
            out.block(
                f"{name + ':':<28}{run.summary['checked']} checked ({verdicts}), "
                f"{run.summary['alerts_published']} alert(s) published",
                indent="",
            )
        out.block(f"{'alerted:':<28}{', '.join(self.alerted)} (drift)", indent="")
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
            ("stopped", "docker-registry, token server, moto server"),
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
