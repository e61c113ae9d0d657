"""`digest-audit listen` end to end: a real docker-registry sends its push notifications to a real listen process.

The registry is configured with `notifications.endpoints` pointing at listen; images are pushed with the test
pusher; CI records with the CLI. Alerts are printed (`--trust-file`/`--state-file`) or published to SNS on moto
and received by an SQS subscriber; then the hourly `run` is asked whether it has anything new to say.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from audit.listener import MAX_CONNECTIONS
from tests.support.aws_fixtures import AwsClients, MotoServer, TableNames
from tests.support.cli_runner import CliRunner, set_audit_environment
from tests.support.listen_process import ListenProcess
from tests.support.local_registry import LocalRegistry, local_registry
from tests.support.registry_process import Notifications, free_port
from tests.support.sns_capture import AlertQueue, create_topic

pytestmark = pytest.mark.integration

TOKEN = secrets.token_hex(24)
GITHUB_SECRET = "documented-test-secret"
GRACE = "3"


@pytest.fixture
def cli(loopback_cli: CliRunner) -> CliRunner:
    """The CLI with only local files and the loopback registry allowed over plain http."""
    return loopback_cli


def start_listen(tmp_path: Path, port: int, *extra: str, grace: str = GRACE) -> ListenProcess:
    docker_config = tmp_path / "docker-config"
    docker_config.mkdir(exist_ok=True)
    return ListenProcess(
        [
            "--port",
            str(port),
            "--grace",
            grace,
            "--trust-file",
            tmp_path / "trust.json",
            "--state-file",
            tmp_path / "state.json",
            "--insecure-registry",
            "127.0.0.1",
            "--reverify-delay",
            "0",
            *extra,
        ],
        env={
            "DOCKER_CONFIG": str(docker_config),
            "DIGEST_AUDIT_WEBHOOK_TOKEN": TOKEN,
            "DIGEST_AUDIT_GITHUB_WEBHOOK_SECRET": GITHUB_SECRET,
        },
        cwd=tmp_path,
    ).start()


@pytest.fixture
def notifying(tmp_path: Path) -> Iterator[tuple[LocalRegistry, int]]:
    """A registry that notifies http://127.0.0.1:PORT/hooks/distribution; listen is started on PORT by the test."""
    port = free_port()
    endpoint = Notifications(url=f"http://127.0.0.1:{port}/hooks/distribution", token=TOKEN)
    with local_registry(tmp_path / "registry", notifications=endpoint) as registry:
        yield registry, port


def runs(listen: ListenProcess, count: int) -> list[str]:
    """The summaries of the first `count` targeted audits."""
    return listen.wait_for_err(r"^run [0-9a-f]{32}: checked", count=count)


def test_push_events_drive_targeted_audits(
    tmp_path: Path, cli: CliRunner, notifying: tuple[LocalRegistry, int]
) -> None:
    registry, port = notifying
    repo = f"team/app{secrets.token_hex(3)}"
    image = f"{registry.host}/{repo}"
    trust, state = tmp_path / "trust.json", tmp_path / "state.json"
    assert cli("watch", image, "--track-new-tags", "--trust-file", trust).code == 0
    listen = start_listen(tmp_path, port)
    try:
        # CI pushes a release and records it within the grace: checked, no alert.
        release = registry.pusher.push_image(repo, "1.0")
        assert (
            cli(
                "record", f"{image}:1.0@{release.digest}", "--source", "https://ci.example/1", "--trust-file", trust
            ).code
            == 0
        )
        assert "checked 1 tag(s): 1 match; 0 finding(s)" in runs(listen, 1)[0]

        # A leaked credential swaps the release: alerted once, seconds after the push.
        swapped = registry.pusher.tamper(repo, "1.0")
        assert swapped.digest != release.digest
        summary = runs(listen, 2)[1]
        assert "checked 1 tag(s): 1 drift; 1 finding(s) published in 1 message(s)" in summary
        assert listen.wait_for_err(rf"time to detect {image}:1\.0: [0-9.]+ s from push to alert")

        # A tag nobody recorded, in a repository that tracks new tags: untracked.
        stray = registry.pusher.push_image(repo, "2.0-stray")
        assert "checked 1 tag(s): 1 untracked; 1 finding(s)" in runs(listen, 3)[2]

        # A recorded release deleted (distribution deletes by digest): the tags that trusted it are missing.
        doomed = registry.pusher.push_image(repo, "3.0")
        assert (
            cli(
                "record", f"{image}:3.0@{doomed.digest}", "--source", "https://ci.example/3", "--trust-file", trust
            ).code
            == 0
        )
        assert "checked 1 tag(s): 1 match" in runs(listen, 4)[3]
        registry.pusher.delete_manifest(repo, doomed.digest)
        assert "checked 1 tag(s): 1 missing; 1 finding(s)" in runs(listen, 5)[4]
    finally:
        code = listen.stop()
    assert code == 0, listen.stderr_text()
    assert "Traceback" not in listen.stderr_text()

    alerts = listen.stdout_text()
    subjects = [line for line in alerts.splitlines() if line.isupper() or line.split(":")[0].isupper()]
    assert subjects == [
        f"DRIFT: {image}:1.0 (1 of 1 tags)",
        f"UNTRACKED: {image}:2.0-stray (1 of 1 tags)",
        f"MISSING: {image}:3.0 (1 of 1 tags)",
    ]
    assert swapped.digest in alerts and stray.digest in alerts

    # The hourly run sees the same problems: same dedup keys, nothing new to publish.
    result = cli("run", "--trust-file", trust, "--state-file", state, "--reverify-delay", "0")
    assert result.code == 1, result.err
    assert result.out == ""
    assert "2 finding" not in result.err and "0 finding(s) published" in result.err


def test_push_events_with_dynamodb_and_sns(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    moto_server: MotoServer,
    aws: AwsClients,
    tables: TableNames,
    notifying: tuple[LocalRegistry, int],
) -> None:
    """The same flow against the AWS stores: the alert reaches an SQS subscriber of the topic exactly once."""
    registry, port = notifying
    topic_arn = create_topic(aws, "listen-alerts")
    inbox = AlertQueue(aws, topic_arn)
    docker_config = tmp_path / "docker-config"
    docker_config.mkdir(exist_ok=True)
    set_audit_environment(
        monkeypatch,
        docker_config=docker_config,
        insecure_registry="127.0.0.1",
        trust_table=tables.trust,
        state_table=tables.state,
        topic_arn=topic_arn,
    )
    cli = CliRunner(capsys)
    repo = f"team/aws{secrets.token_hex(3)}"
    image = f"{registry.host}/{repo}"
    listen = ListenProcess(
        ["--port", str(port), "--grace", GRACE, "--insecure-registry", "127.0.0.1", "--reverify-delay", "0"],
        env={
            **moto_server.environment,
            "TRUSTED_DIGESTS_TABLE": tables.trust,
            "AUDIT_STATE_TABLE": tables.state,
            "ALERT_TOPIC_ARN": topic_arn,
            "DOCKER_CONFIG": str(docker_config),
            "DIGEST_AUDIT_WEBHOOK_TOKEN": TOKEN,
        },
        cwd=tmp_path,
    ).start()
    try:
        release = registry.pusher.push_image(repo, "1.0")
        assert cli("record", f"{image}:1.0@{release.digest}", "--source", "https://ci.example/1").code == 0
        assert "1 match; 0 finding(s)" in runs(listen, 1)[0]
        assert inbox.receive() == []

        registry.pusher.tamper(repo, "1.0")
        assert "1 drift; 1 finding(s) published in 1 message(s)" in runs(listen, 2)[1]
        (alert,) = inbox.receive()
        assert alert.subject == f"DRIFT: {image}:1.0 (1 of 1 tags)"
        assert alert.attributes["verdict"] == "drift"
    finally:
        code = listen.stop()
    assert code == 0, listen.stderr_text()
    assert listen.stdout_text() == ""  # alerts went to SNS

    hourly = cli("run", "--reverify-delay", "0")
    assert hourly.code == 1
    assert inbox.receive() == []  # same dedup key: the hourly run has nothing new to say


def post(port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=10) as client:
        return client.post(f"http://127.0.0.1:{port}{path}", content=body, headers=headers or {})


def raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def flood(listen: ListenProcess, port: int, count: int) -> int:
    """Open `count` idle connections, then send a request on each; return how many got an HTTP answer."""
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    try:
        listen.wait_for_err(r"connection from .* refused", count=count - MAX_CONNECTIONS)
        answered = 0
        for sock in sockets:
            try:
                sock.sendall(b"POST /nowhere HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
                answered += sock.recv(100).startswith(b"HTTP/1.1 404 ")
            except OSError:
                pass  # closed by the server
        return answered
    finally:
        for sock in sockets:
            sock.close()


def github(
    body: bytes, delivery: str, *, secret: str = GITHUB_SECRET, event: str = "registry_package"
) -> dict[str, str]:
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": signature, "X-GitHub-Delivery": delivery, "X-GitHub-Event": event}


def test_hostile_input_gets_a_clear_4xx_and_nothing_is_queued_or_logged_raw(tmp_path: Path, cli: CliRunner) -> None:
    trust = tmp_path / "trust.json"
    assert cli("watch", "ghcr.io/org/app", "--track-new-tags", "--trust-file", trust).code == 0
    port = free_port()
    listen = start_listen(tmp_path, port, grace="600")
    evil_tag = "1.0\x1b]8;;http://evil.example\x07"
    envelope = {
        "events": [
            {
                "action": "push",
                "target": {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "repository": "team/app",
                    "tag": evil_tag,
                },
                "request": {"host": "127.0.0.1:5000"},
            }
        ]
    }
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    package = json.dumps(
        {
            "action": "published",
            "registry_package": {
                "name": "app",
                "namespace": "org",
                "package_type": "CONTAINER",
                "package_version": {"container_metadata": {"tag": {"name": "1.4.0", "digest": "sha256:" + "a" * 64}}},
            },
        }
    ).encode()
    try:
        statuses = {
            "no token": post(port, "/hooks/distribution", json.dumps(envelope).encode()).status_code,
            "wrong token": post(port, "/hooks/distribution", b"{}", {"Authorization": "Bearer nope"}).status_code,
            "malformed JSON": post(port, "/hooks/distribution", b'{"events": [', bearer).status_code,
            "control characters in a tag": post(
                port, "/hooks/distribution", json.dumps(envelope).encode(), bearer
            ).status_code,
            "pull event": post(
                port,
                "/hooks/distribution",
                json.dumps({"events": [{**envelope["events"][0], "action": "pull"}]}).encode(),
                bearer,
            ).status_code,
            "unsigned GitHub": post(port, "/hooks/github", package, {"X-GitHub-Event": "registry_package"}).status_code,
            "wrongly signed GitHub": post(
                port, "/hooks/github", package, github(package, "d-1", secret="guess")
            ).status_code,
            "GitHub ping": post(
                port, "/hooks/github", b'{"zen": "x"}', github(b'{"zen": "x"}', "d-0", event="ping")
            ).status_code,
            "signed GitHub": post(port, "/hooks/github", package, github(package, "d-1")).status_code,
            "replayed GitHub": post(port, "/hooks/github", package, github(package, "d-1")).status_code,
            "Docker Hub guessed token": post(port, "/hooks/dockerhub/guess", b"{}").status_code,
            "unknown route": post(port, "/hooks/quay", b"{}").status_code,
        }
        huge = raw_exchange(
            port, f"POST /hooks/distribution HTTP/1.1\r\nHost: x\r\nContent-Length: {2 * 1024 * 1024}\r\n\r\n".encode()
        )
        header_bomb = raw_exchange(port, b"POST /hooks/github HTTP/1.1\r\n" + b"X-A: " + b"a" * 40_000 + b"\r\n\r\n")
        chunked = raw_exchange(
            port, b"POST /hooks/distribution HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        wrong_method = raw_exchange(port, b"GET /hooks/distribution HTTP/1.1\r\nHost: x\r\n\r\n")
        answered = flood(listen, port, MAX_CONNECTIONS + 6)
    finally:
        code = listen.stop(signal.SIGINT)

    assert statuses == {
        "no token": 401,
        "wrong token": 401,
        "malformed JSON": 400,
        "control characters in a tag": 400,
        "pull event": 204,
        "unsigned GitHub": 401,
        "wrongly signed GitHub": 401,
        "GitHub ping": 204,
        "signed GitHub": 202,
        "replayed GitHub": 204,
        "Docker Hub guessed token": 401,
        "unknown route": 404,
    }
    assert huge.startswith(b"HTTP/1.1 413 ")
    assert header_bomb.startswith(b"HTTP/1.1 431 ")
    assert chunked.startswith(b"HTTP/1.1 411 ")
    assert wrong_method.startswith(b"HTTP/1.1 405 ") and b"\r\nAllow: POST\r\n" in wrong_method
    for response in (huge, header_bomb, chunked, wrong_method):
        assert b"evil" not in response

    assert answered == MAX_CONNECTIONS  # idle connections beyond the cap were closed unanswered
    assert code == 0
    logged = listen.stderr_text()
    assert len(listen.wait_for_err("queued check:")) == 1  # only the one signed, new GitHub delivery
    assert "ghcr.io/org/app:1.4.0" in logged
    assert "\x1b" not in logged and "\x07" not in logged and "\\x1b" in logged
    assert TOKEN not in logged and GITHUB_SECRET not in logged
    assert "1 pending check(s) dropped" in logged
    assert "Traceback" not in logged
    assert listen.stdout_text() == ""


@pytest.mark.parametrize(
    ("env", "argv", "message"),
    [
        ({}, [], "no webhook secret is set"),
        ({"DIGEST_AUDIT_WEBHOOK_TOKEN": "short"}, [], "DIGEST_AUDIT_WEBHOOK_TOKEN is shorter than"),
        ({"DIGEST_AUDIT_WEBHOOK_TOKEN": TOKEN}, ["--registry-alias", "nohost"], "invalid --registry-alias 'nohost'"),
        (
            {"DIGEST_AUDIT_WEBHOOK_TOKEN": TOKEN},
            ["--trust-file", "missing.json"],
            "--trust-file and --state-file go together",
        ),
    ],
)
def test_listen_usage_errors_are_clear(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], argv: list[str], message: str
) -> None:
    monkeypatch.delenv("DIGEST_AUDIT_WEBHOOK_TOKEN", raising=False)
    monkeypatch.delenv("DIGEST_AUDIT_GITHUB_WEBHOOK_SECRET", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = cli("listen", "--port", "0", *argv)
    assert result.code == 2
    assert message in result.err
    assert "Traceback" not in result.err


def test_listen_on_a_busy_port_is_a_usage_error(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DIGEST_AUDIT_WEBHOOK_TOKEN", TOKEN)
    trust = tmp_path / "trust.json"
    assert cli("watch", "ghcr.io/org/app", "--track-new-tags", "--trust-file", trust).code == 0
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("listen", "--port", str(port), "--trust-file", trust, "--state-file", tmp_path / "state.json")
    assert result.code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.err
