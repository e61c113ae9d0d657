"""The init use case: both tables, then a topic only when asked for, through the Provisioning port."""

from __future__ import annotations

from audit.app.init import create_stores, create_topic
from tests.support.memory_ports import MemoryProvisioning


def test_init_creates_both_tables_and_returns_the_topic_arn() -> None:
    provisioning = MemoryProvisioning()
    create_stores(provisioning, "trust", "state")
    assert create_topic(provisioning, "alerts") == "arn:aws:sns:eu-west-1:123456789012:alerts"
    assert provisioning.calls == [("tables", "trust", "state"), ("topic", "alerts")]
