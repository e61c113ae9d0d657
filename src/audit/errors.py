"""The error tree of digest-audit: every error carries a hint that tells the operator what to do next.

AuditError
 ├── UsageError                 bad input from the user (exit code 2)
 │    ├── InvalidReferenceError an image reference that cannot be parsed
 │    ├── InvalidDigestError    a digest that is not `sha256:<64 hex>` / `sha512:<128 hex>`
 │    ├── ConfigError           a missing or malformed setting (environment or flag)
 │    └── InvalidEventError     a push event or queue message outside its grammar
 ├── CredentialsError           credentials could not be loaded (config.json, helper, ECR, secret)
 ├── RegistryError              a registry answered in a way that prevents establishing a digest
 │    └── PackageIndexError     a package index page or file could not be read (or was not an index page)
 │         └── ProjectNotFoundError  the index has no such project (404/410)
 ├── TrustError                 the trust store refused an operation (e.g. silent replace)
 │    └── TrustConflictError    a different digest is already trusted for this tag
 ├── StoreError                 the trust or state store could not be read or written (exit code 4)
 └── PublishError               alerts could not be published (exit code 4)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from audit.records import Finding


class AuditError(Exception):
    """Base of every error digest-audit raises on purpose; `hint` says what the operator can do."""

    exit_code = 1
    default_hint = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def diagnostics(self) -> str:
        """The one or two lines shown to a person: what failed, then what to do."""
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class UsageError(AuditError):
    exit_code = 2


class InvalidReferenceError(UsageError):
    default_hint = "use NAME[:TAG][@sha256:DIGEST], e.g. ghcr.io/org/app:1.2.3 or nginx:1.27"


class InvalidDigestError(UsageError):
    default_hint = "a digest looks like sha256: followed by 64 lowercase hex characters"


class ConfigError(UsageError):
    pass


class InvalidEventError(UsageError):
    default_hint = "a push event is only a hint to check a tag; this one was dropped, the scheduled run still audits"


class CredentialsError(AuditError):
    exit_code = 3
    default_hint = "check the registry credentials (docker login, DOCKER_CONFIG, or the credentials secret)"


class RegistryError(AuditError):
    exit_code = 3
    #: The short phrase of why a request failed, without the reference (set by the registry client).
    reason: str | None = None


class PackageIndexError(RegistryError):
    default_hint = "check the index URL, the network, and the index credentials (netrc or the credentials secret)"


class ProjectNotFoundError(PackageIndexError):
    default_hint = "check the project name and --index-url"


class TrustError(AuditError):
    exit_code = 1


class TrustConflictError(TrustError):
    default_hint = (
        "if the new digest is a legitimate re-release, re-run with --replace --reason TEXT; "
        "the previous record is kept as history"
    )


class StoreError(AuditError):
    exit_code = 4


class PublishError(AuditError):
    """`delivered`: the findings whose messages SNS did accept before the failure (their state may be saved)."""

    exit_code = 4

    def __init__(self, message: str, *, hint: str | None = None, delivered: tuple[Finding, ...] = ()) -> None:
        super().__init__(message, hint=hint)
        self.delivered = delivered
