"""`init`: create the trust and state tables (and optionally an alert topic) for local use, tests and non-SAM users.

Idempotent: tables that exist with the expected key schema are kept, a topic that exists is returned.
"""

from __future__ import annotations

from audit.ports import Provisioning


def create_stores(provisioning: Provisioning, trust_table: str, state_table: str) -> None:
    """Both tables, ready for use when this returns."""
    provisioning.create_tables(trust_table, state_table)


def create_topic(provisioning: Provisioning, name: str) -> str:
    """The ARN of the topic `name`, created if it did not exist."""
    return provisioning.create_topic(name)
