"""Lambda entry point: validate the Scheduler input, run one audit, emit metrics, return a summary."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from audit import bootstrap
from audit.errors import AuditError, ConfigError, InvalidReferenceError
from audit.service import RunOptions, RunReport

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
    try:
        request = parse_event(event)
    except ConfigError as exc:
        logger.error("rejected event", extra={"error": exc.message})  # noqa: TRY400 - a user error, no traceback
        raise
    app = bootstrap.lambda_app()
    margin_ms = app.time_margin_seconds * 1000

    def should_start() -> bool:
        return context.get_remaining_time_in_millis() > margin_ms

    options = RunOptions(
        repositories=frozenset(request.repositories) if request.repositories else None,
        dry_run=request.dry_run,
    )
    try:
        report = app.run(options, should_start=should_start)
    except AuditError as exc:
        logger.error("audit failed", extra={"error": exc.message, "hint": exc.hint})  # noqa: TRY400
        raise
    _emit_metrics(report)
    summary = summarise(report, dry_run=request.dry_run)
    logger.info("audit finished", extra=summary)
    return summary


def _emit_metrics(report: RunReport) -> None:
    metrics.add_metric(name="TagsChecked", unit=MetricUnit.Count, value=report.checked)
    for verdict in ("match", "drift", "missing", "unverifiable", "untracked"):
        metrics.add_metric(
            name=f"Verdict{verdict.capitalize()}",
            unit=MetricUnit.Count,
            value=report.by_verdict.get(verdict, 0),
        )
    metrics.add_metric(name="AlertsPublished", unit=MetricUnit.Count, value=report.alerts_published)
    metrics.add_metric(name="TagsUnreached", unit=MetricUnit.Count, value=len(report.unreached))
    metrics.add_metric(name="RunDuration", unit=MetricUnit.Milliseconds, value=report.duration_ms)
    metrics.add_metric(name="AuditCompleted", unit=MetricUnit.Count, value=1)


def summarise(report: RunReport, *, dry_run: bool) -> dict[str, Any]:
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
        "dry_run": dry_run,
        "duration_ms": report.duration_ms,
    }
