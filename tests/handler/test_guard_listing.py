"""The Lambda's remaining-time guard bounds tag listing too: a registry that pages forever is cut off."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

import handler  # noqa: F401 - first import at collection, so Powertools' logger writes to a stable stream
from audit.adapters.dynamodb_store import DynamoTrustStore
from audit.records import WatchSettings
from tests.support.lambda_env import NO_METRICS_WARNING, FakeContext, LambdaEnvironment, cold_start, load_event
from tests.support.loopback_server import LoopbackServer, Recorded, Reply

pytestmark = [pytest.mark.integration, NO_METRICS_WARNING]


REPOSITORY = "org/endless"


def endless_pages(request: Recorded) -> Reply:
    """Every tag list page links to one more; every manifest is unknown (the tags are never reached anyway)."""
    if not request.path.startswith(f"/v2/{REPOSITORY}/tags/list"):
        return Reply(404, {"Content-Type": "application/json"}, b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}')
    page = int(parse_qs(urlsplit(request.path).query).get("page", ["0"])[0])
    link = f'</v2/{REPOSITORY}/tags/list?n=1000&page={page + 1}>; rel="next"'
    body = json.dumps({"name": REPOSITORY, "tags": [f"p{page}"]}).encode()
    return Reply(200, {"Content-Type": "application/json", "Link": link}, body)


@pytest.fixture
def endless_registry(lambda_env: LambdaEnvironment) -> Iterator[LoopbackServer]:
    with LoopbackServer(endless_pages) as server:
        lambda_env.allow_plain_http(server.host)
        yield server


def test_endless_pagination_stops_when_the_remaining_time_runs_low(
    lambda_env: LambdaEnvironment, endless_registry: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust = DynamoTrustStore(lambda_env.tables.trust, lambda_env.aws.dynamodb())
    trust.put_watch_settings(WatchSettings(registry=endless_registry.host, repository=REPOSITORY, track_new_tags=True))
    function = cold_start(monkeypatch)

    summary = function.invoke(load_event("scheduled.json"), FakeContext(drop_after=5))

    pages = [r for r in endless_registry.requests if "/tags/list" in r.path]
    assert len(pages) == 6  # the first page, then one per "time left" answer (5), then the guard said stop
    image = f"{endless_registry.host}/{REPOSITORY}"
    assert summary["unlisted"] == {image: "tag list not fully read: time ran out after 6 names"}
    assert summary["checked"] == 0 and len(summary["unreached"]) == 6
