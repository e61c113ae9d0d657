"""Why a registry conversation failed: a kind and a short reason inside the client, a RegistryError outside it.

The kind decides what an operator is told to do (`hint_for`); the reason is the short phrase shown next to the
tag. Hints are keyed by kind, never guessed from the wording of a reason.

    FailureKind
    ├── AUTH            credentials refused, no usable challenge, token server said no
    ├── CREDENTIALS     the credential source (helper, secret) failed before anything was sent
    ├── ACCESS_DENIED   403: authenticated, but not allowed to pull
    ├── RATE_LIMITED    429 beyond what Retry-After lets us wait
    ├── TLS             certificate or handshake
    ├── INSECURE        plain HTTP to a host not listed insecure (registry, redirect, token realm)
    ├── UNREACHABLE     timeout, refused, reset, DNS
    ├── NOT_FOUND       repository, tag or digest unknown (only where that is an error: fetch, list)
    ├── SERVER          5xx or the token server in trouble
    ├── SCHEMA1         a Docker schema 1 manifest: never verifiable
    ├── BAD_RESPONSE    malformed, oversized, lying headers, unexpected status, redirect loops
    ├── BAD_NAME        a repository or tag name outside the distribution grammar: never sent
    └── OTHER
"""

from __future__ import annotations

from enum import StrEnum

from audit.errors import RegistryError


class FailureKind(StrEnum):
    AUTH = "auth"
    CREDENTIALS = "credentials"
    ACCESS_DENIED = "access-denied"
    RATE_LIMITED = "rate-limited"
    TLS = "tls"
    INSECURE = "insecure"
    UNREACHABLE = "unreachable"
    NOT_FOUND = "not-found"
    SERVER = "server"
    SCHEMA1 = "schema1"
    BAD_RESPONSE = "bad-response"
    BAD_NAME = "bad-name"
    OTHER = "other"


class RegistryFailure(Exception):
    """Internal: the registry could not give an answer; `reason` is a short phrase without secrets."""

    def __init__(self, reason: str, kind: FailureKind = FailureKind.OTHER) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


class RegistryRequestError(RegistryError):
    """A registry request failed (`list_tags`, `fetch_manifest`); `reason` is the short phrase, `kind` its kind."""

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        registry: str,
        kind: FailureKind = FailureKind.OTHER,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint if hint is not None else hint_for(kind, registry))
        self.reason = reason
        self.kind = kind
        self.registry = registry


def status_failure(status: int) -> RegistryFailure:
    """An HTTP status the client has no better answer for."""
    return RegistryFailure(f"http {status}", FailureKind.SERVER if status >= 500 else FailureKind.BAD_RESPONSE)


_CHECK_CREDENTIALS = (
    "check the credentials for {registry} (docker login, DOCKER_CONFIG, credential helper, or the credentials secret)"
)
_HINTS: dict[FailureKind, str] = {
    FailureKind.AUTH: _CHECK_CREDENTIALS,
    FailureKind.CREDENTIALS: _CHECK_CREDENTIALS,
    FailureKind.ACCESS_DENIED: "the credentials for {registry} lack pull access to this repository",
    FailureKind.RATE_LIMITED: "wait for the registry's rate limit window, or authenticate to get a higher limit",
    FailureKind.TLS: "give the CA that signed {registry}'s certificate with --ca-file, or fix the certificate",
    FailureKind.SCHEMA1: (
        "schema 1 is deprecated and cannot be verified by digest; re-push the tag as schema 2 or OCI "
        "(e.g. `crane copy` or `docker buildx imagetools create` from the trusted source), then record it"
    ),
    FailureKind.INSECURE: (
        "plain HTTP is used only for hosts listed as insecure registries; list it if that is intended"
    ),
    FailureKind.UNREACHABLE: "check that {registry} is reachable from here (address, port, proxy, firewall)",
    FailureKind.NOT_FOUND: "check the spelling of the image name, and that the credentials can see the repository",
    FailureKind.SERVER: "{registry} is having trouble; retry later",
    FailureKind.BAD_RESPONSE: "retry later; if it persists, check the registry with `curl -I` on the same URL",
    FailureKind.BAD_NAME: "the name is outside the distribution grammar; fix the record or ignore the tag",
    FailureKind.OTHER: "retry later; if it persists, check the registry with `curl -I` on the same URL",
}


def hint_for(kind: FailureKind, registry: str) -> str:
    """What an operator can do about a failure of this kind."""
    return _HINTS[kind].format(registry=registry)
