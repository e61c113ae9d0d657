"""Lambda entry point: validate the Scheduler input (or take an SQS batch of push events), run one audit, emit
metrics, return a summary (for a batch: the partial batch response)."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from audit import bootstrap, push_events
from audit.app.audit import RunOptions, RunReport
from audit.errors import AuditError, ConfigError, InvalidEventError, InvalidReferenceError
from audit.hooks import CheckRequest
from audit.models import AUDIT_VERDICTS, iso_utc

# Defaults equal the template's, so the heartbeat alarm (namespace + `service` dimension) always matches.
SERVICE_NAME = os.environ.get("POWERTOOLS_SERVICE_NAME", "digest-audit")
METRICS_NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "DigestAudit")
logger = Logger(service=SERVICE_NAME)
metrics = Metrics(namespace=METRICS_NAMESPACE, service=SERVICE_NAME)

type LambdaHandler = Callable[[dict[str, Any], LambdaContext], dict[str, Any]]


def tracing_enabled(environ: dict[str, str] | None = None) -> bool:
    """Whether X-Ray tracing is on: inside Lambda (not SAM local), unless POWERTOOLS_TRACE_DISABLED says no.

    The same rule Powertools' Tracer applies to itself; asked here first because merely building a Tracer
    imports the X-Ray SDK (about 80 ms, with botocore's session), which a process that never traces should
    not pay at start-up.
    """
    env = os.environ if environ is None else environ
    if env.get("POWERTOOLS_TRACE_DISABLED", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    return "AWS_LAMBDA_FUNCTION_NAME" in env and "AWS_SAM_LOCAL" not in env


def traced(handler: LambdaHandler) -> LambdaHandler:
    """`Tracer().capture_lambda_handler`, with the X-Ray SDK imported only when tracing is on."""
    if not tracing_enabled():
        return handler
    from aws_lambda_powertools import Tracer  # noqa: PLC0415 - deferred on purpose, see tracing_enabled

    wrapped: LambdaHandler = Tracer().capture_lambda_handler(handler)
    return wrapped


class AuditEvent(BaseModel):
    """What EventBridge Scheduler passes as `Input` (as-is, no envelope): all optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repositories: list[str] | None = Field(default=None, min_length=1)
    dry_run: bool = Field(default=False, strict=True)

    @field_validator("repositories")
    @classmethod
    def _normalise(cls, names: list[str] | None) -> list[str] | None:
        if names is None:
            return None
        try:
            return [bootstrap.image_name(name) for name in names]
        except InvalidReferenceError as exc:
            raise ValueError(exc.message) from None


def parse_event(event: Any) -> AuditEvent:
    """Validate the event; a bad one raises ConfigError naming every problem."""
    try:
        return AuditEvent.model_validate(event if event is not None else {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'event'}: {error['msg']}" for error in exc.errors()
        )
        raise ConfigError(
            f"invalid audit event: {problems}",
            hint='send {} for a full audit, or {"repositories": ["ghcr.io/org/app"], "dry_run": true}',
        ) from None


@metrics.log_metrics
@traced
@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if is_sqs_batch(event):
        return consume_push_events(event, context)
    try:
        request = parse_event(event)
    except ConfigError as exc:
        logger.error("rejected event", extra={"error": exc.message})  # noqa: TRY400 - a user error, no traceback
        raise
    app = bootstrap.lambda_app()
    should_start = _time_guard(app, context)
    options = RunOptions(
        repositories=frozenset(request.repositories) if request.repositories else None,
        dry_run=request.dry_run,
    )
    try:
        report = app.run_blocking(app.auditor(should_start=should_start).run(options))
    except AuditError as exc:
        logger.error("audit failed", extra={"error": exc.message, "hint": exc.hint})  # noqa: TRY400
        raise
    summary = summarise(report, dry_run=request.dry_run)
    if report.stepped_aside is not None:
        # Not an error: the run that holds the lease audits and alerts. Raising would make the schedule
        # retry into the same lease and raise the error alarm for a run that did exactly what it should.
        # AuditCompleted is not emitted, so a lease that stays held beyond a slot trips the heartbeat alarm.
        metrics.add_metric(name="RunSteppedAside", unit=MetricUnit.Count, value=1)
        logger.warning("stepped aside: another run holds the lease", extra=summary)
        return summary
    _emit_metrics(report)
    logger.info("audit finished", extra=summary)
    return summary


def _time_guard(app: bootstrap.App, context: LambdaContext) -> Callable[[], bool]:
    """Start no further check when less than the margin is left (retries, re-verification and saving)."""
    margin_ms = app.settings.time_margin_seconds * 1000

    def should_start() -> bool:
        return context.get_remaining_time_in_millis() > margin_ms

    return should_start


def is_sqs_batch(event: Any) -> bool:
    """An SQS event source batch (the push-event queue), as opposed to the Scheduler's `Input`."""
    if not isinstance(event, dict) or set(event) != {"Records"} or not isinstance(event["Records"], list):
        return False
    return bool(event["Records"]) and all(
        isinstance(record, dict) and record.get("eventSource") == "aws:sqs" for record in event["Records"]
    )


def consume_push_events(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """One targeted audit for the whole batch, with the scheduled run's engine, state and dedup.

    A malformed message is logged and dropped (retrying cannot repair it; the scheduled run still audits its
    tag). Messages whose audit could not run or finish are returned as `batchItemFailures`: only they return to
    the queue (and after `maxReceiveCount` receives, to its dead-letter queue).
    """
    requests: dict[str, CheckRequest] = {}
    dropped = 0
    for record in event["Records"]:
        message_id = str(record.get("messageId", ""))
        try:
            request = push_events.parse_queue_message(record.get("body"))
        except InvalidEventError as exc:
            dropped += 1
            logger.warning("dropped push event message", extra={"message_id": message_id, "error": exc.message})
            continue
        if request is not None:
            requests[message_id] = request
    metrics.add_metric(name="PushEventsReceived", unit=MetricUnit.Count, value=len(event["Records"]))
    metrics.add_metric(name="PushEventsDropped", unit=MetricUnit.Count, value=dropped)
    if not requests:
        return {"batchItemFailures": []}

    app = bootstrap.lambda_app()
    try:
        report = app.run_blocking(app.push_audit(should_start=_time_guard(app, context)).run(list(requests.values())))
        if report is None:  # only deletes by digest of digests nobody trusted: nothing to check
            return {"batchItemFailures": []}
    except AuditError as exc:
        logger.error("push event audit failed", extra={"error": exc.message, "hint": exc.hint})  # noqa: TRY400
        return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in requests]}
    if report.stepped_aside is not None:
        # Another run (a CLI `run` or `listen`) holds the lease and checked none of these: they go back to the
        # queue and come again after its visibility timeout.
        metrics.add_metric(name="RunSteppedAside", unit=MetricUnit.Count, value=1)
        logger.warning(
            "push event audit stepped aside: another run holds the lease", extra=summarise(report, dry_run=False)
        )
        return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in requests]}
    published_at = datetime.now(UTC)
    _emit_metrics(report, heartbeat=False)
    if report.alerts_published:
        for seconds in push_events.time_to_detect(list(requests.values()), report.findings, published_at=published_at):
            metrics.add_metric(name="TimeToDetect", unit=MetricUnit.Seconds, value=seconds)
    # A tag the run had no time left to check is retried with its message; everything else was judged.
    unreached = {(ref.image, ref.tag) for ref in report.unreached}
    failures = [
        {"itemIdentifier": message_id}
        for message_id, request in requests.items()
        if (request.image, request.tag) in unreached
    ]
    summary = summarise(report, dry_run=False)
    logger.info("push event audit finished", extra={**summary, "messages": len(event["Records"]), "dropped": dropped})
    return {"batchItemFailures": failures}


def _emit_metrics(report: RunReport, *, heartbeat: bool = True) -> None:
    metrics.add_metric(name="TagsChecked", unit=MetricUnit.Count, value=report.checked)
    for verdict in AUDIT_VERDICTS:
        metrics.add_metric(
            name=f"Verdict{verdict.value.capitalize()}",
            unit=MetricUnit.Count,
            value=report.by_verdict.get(verdict.value, 0),
        )
    metrics.add_metric(name="AlertsPublished", unit=MetricUnit.Count, value=report.alerts_published)
    metrics.add_metric(name="TagsUnreached", unit=MetricUnit.Count, value=len(report.unreached))
    metrics.add_metric(name="RunDuration", unit=MetricUnit.Milliseconds, value=report.duration_ms)
    if heartbeat:  # only the scheduled run: push events must not hide a dead schedule from the heartbeat alarm
        metrics.add_metric(name="AuditCompleted", unit=MetricUnit.Count, value=1)


def summarise(report: RunReport, *, dry_run: bool) -> dict[str, Any]:
    if report.stepped_aside is not None:
        claim = report.stepped_aside
        return {
            "run_id": report.run_id,
            "stepped_aside": True,
            "lease_holder": claim.holder,
            "lease_expires_at": iso_utc(claim.expires_at),
            "checked": 0,
            "alerts_published": 0,
            "dry_run": dry_run,
            "duration_ms": report.duration_ms,
        }
    return {
        "run_id": report.run_id,
        "checked": report.checked,
        "by_verdict": report.by_verdict,
        "alerts_published": report.alerts_published,
        "findings": len(report.findings),
        "unreached": [str(ref) for ref in report.unreached],
        # Repositories whose tags were not all listed (the guard stopped paging, the cap, an error): not clean.
        "unlisted": dict(sorted(report.unlisted.items())),
        "unverifiable": [{"reference": str(r.ref), "reason": r.reason} for r in report.unverifiable],
        "stepped_aside": False,
        "dry_run": dry_run,
        "duration_ms": report.duration_ms,
    }
