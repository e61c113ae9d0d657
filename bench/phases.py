"""`run` on DynamoDB, phase by phase: when Scan pages arrive and when checks start and end, in one process.

Runs the audit engine (built by `bootstrap.build`; dry run: decide, publish and save nothing) against the trust
and state tables at AWS_ENDPOINT_URL (moto, behind the bench's counting proxy) and a loopback registry, timing the trust
Scan's pages and the checks. `overlap_s` is how long checks ran while the Scan was still reading: the point of
starting at the first page. Prints JSON.

    python -m bench.phases --trust-table T --state-table S [--segments 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterator, Sequence

from audit import bootstrap
from audit.adapters.dynamodb_store import SCAN_SEGMENTS, DynamoTrustStore
from audit.adapters.registry import RegistryClient
from audit.app.audit import RunOptions
from audit.config import AlertSettings, AuditSettings, RegistrySettings, Settings, StoreSettings
from audit.models import Digest, ImageRef, Observation
from audit.records import TrustSnapshot


class Timeline:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.pages: list[float] = []
        self.first_check: float | None = None
        self.last_check_done = 0.0
        self.checks = 0

    def now(self) -> float:
        return round(time.perf_counter() - self.started, 4)


class TimedTrust(DynamoTrustStore):
    timeline: Timeline

    def snapshot_pages(self) -> Iterator[TrustSnapshot]:
        for page in super().snapshot_pages():
            self.timeline.pages.append(self.timeline.now())
            yield page


class TimedRegistry(RegistryClient):
    timeline: Timeline

    async def observe(self, ref: ImageRef, *, expected: Digest | None = None, platforms: bool = False) -> Observation:
        timeline = self.timeline
        if timeline.first_check is None:
            timeline.first_check = timeline.now()
        observation = await super().observe(ref, expected=expected, platforms=platforms)
        timeline.checks += 1
        timeline.last_check_done = timeline.now()
        return observation


async def audit(args: argparse.Namespace, timeline: Timeline) -> int:
    dynamodb = bootstrap.dynamodb_client()
    trust = TimedTrust(args.trust_table, dynamodb, scan_segments=args.segments)
    trust.timeline = timeline
    settings = Settings(
        registry=RegistrySettings(insecure_registries=frozenset({args.insecure})),
        stores=StoreSettings(trust_table=args.trust_table, state_table=args.state_table),
        alerts=AlertSettings(print_alerts=True),
        audit=AuditSettings(reverify_delay=0),
    )
    async with TimedRegistry(settings.registry) as registry:
        registry.timeline = timeline
        app = bootstrap.build(settings, trust=trust, registry=registry, alert_stream=sys.stderr)
        report = await app.auditor(dry_run=True, with_packages=False).run(RunOptions(dry_run=True))
    return report.checked


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.phases")
    parser.add_argument("--trust-table", required=True)
    parser.add_argument("--state-table", required=True)
    parser.add_argument("--insecure", default="127.0.0.1")
    parser.add_argument("--segments", type=int, default=SCAN_SEGMENTS)
    args = parser.parse_args(argv)
    timeline = Timeline()
    checked = asyncio.run(audit(args, timeline))
    total = timeline.now()
    scan_done = timeline.pages[-1] if timeline.pages else 0.0
    first_check = timeline.first_check or 0.0
    json.dump(
        {
            "segments": args.segments,
            "checked": checked,
            "scan_pages": len(timeline.pages),
            "first_page_s": timeline.pages[0] if timeline.pages else None,
            "scan_done_s": scan_done,
            "first_check_s": first_check,
            "checks_done_s": timeline.last_check_done,
            "overlap_s": round(max(0.0, scan_done - first_check), 4),
            "total_s": total,
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
