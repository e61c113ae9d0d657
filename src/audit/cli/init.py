"""`digest-audit init`: create the two tables (and optionally a topic) for local use, tests and non-SAM users."""

from __future__ import annotations

import argparse

from audit import bootstrap
from audit.app.init import create_stores, create_topic
from audit.cli.common import settings_from
from audit.config import ENV_STATE_TABLE, ENV_TRUST_TABLE


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "init",
        help="create the trust and state tables (idempotent)",
        description="Create the tables named by TRUSTED_DIGESTS_TABLE and AUDIT_STATE_TABLE at the configured "
        "endpoint (AWS_ENDPOINT_URL honoured), with the key schema of the SAM template. Existing tables are kept.",
    )
    parser.add_argument("--topic", metavar="NAME", help="also create an SNS topic with this name and print its ARN")
    parser.set_defaults(handler=run_init)


def run_init(args: argparse.Namespace) -> int:
    app = bootstrap.build(settings_from(args))
    tables = app.settings.stores
    trust = bootstrap.require(tables.trust_table, what="trust table name", variable=ENV_TRUST_TABLE)
    state = bootstrap.require(tables.state_table, what="state table name", variable=ENV_STATE_TABLE)
    provisioning = app.provisioning
    create_stores(provisioning, trust, state)
    print(f"tables ready: {trust} (trusted digests), {state} (audit state)")
    if args.topic:
        print(f"topic ready: {create_topic(provisioning, args.topic)}")
    return 0
