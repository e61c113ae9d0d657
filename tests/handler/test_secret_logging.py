"""No log level prints a secret: with the root logger at DEBUG (Lambda's ApplicationLogLevel=DEBUG), reading the
registry credentials secret from Secrets Manager leaves no password in the logs (botocore logs response bodies)."""

from __future__ import annotations

import json
import logging
import secrets

import pytest

from audit import bootstrap
from tests.support.aws_fixtures import AwsClients

pytestmark = pytest.mark.integration


def test_reading_the_credentials_secret_at_debug_level_logs_no_password(
    aws: AwsClients, caplog: pytest.LogCaptureFixture
) -> None:
    password = f"pw-{secrets.token_hex(12)}"
    secret = {"registry.example.com": {"username": "ci", "password": password}}
    arn = aws.secretsmanager().create_secret(
        Name=f"digest-audit/creds-{secrets.token_hex(4)}", SecretString=json.dumps(secret)
    )["ARN"]
    caplog.set_level(logging.DEBUG)  # the root logger, as the Lambda runtime sets it for DEBUG
    logging.getLogger("audit.test").debug("debug records are captured")

    text = bootstrap.read_secret(arn)

    assert json.loads(text) == secret  # the secret was really read, through botocore
    assert "debug records are captured" in caplog.text
    assert password not in caplog.text
    assert not [
        record
        for record in caplog.records
        if record.name.startswith(("botocore", "urllib3", "boto3")) and record.levelno < logging.WARNING
    ]
