"""Why a registry conversation failed: a short reason phrase inside the client, a RegistryError outside it."""

from __future__ import annotations

from audit.errors import RegistryError


class RegistryFailure(Exception):
    """Internal: the registry could not give an answer; `reason` is a short phrase without secrets."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RegistryRequestError(RegistryError):
    """A registry request failed (`list_tags`, `fetch_manifest`); `reason` is the short phrase."""

    def __init__(self, message: str, *, reason: str, registry: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint if hint is not None else hint_for(reason, registry))
        self.reason = reason
        self.registry = registry


def hint_for(reason: str, registry: str) -> str:
    """What an operator can do about a failure reason."""
    if reason.startswith("auth failed") or reason.startswith("credentials"):
        return (
            f"check the credentials for {registry} (docker login, DOCKER_CONFIG, credential helper, "
            "or the credentials secret)"
        )
    if reason == "access denied":
        return f"the credentials for {registry} lack pull access to this repository"
    if "rate limited" in reason:
        return "wait for the registry's rate limit window, or authenticate to get a higher limit"
    if "tls" in reason:
        return f"give the CA that signed {registry}'s certificate with --ca-file, or fix the certificate"
    if reason.startswith("serves a Docker schema 1 manifest"):
        return (
            "schema 1 is deprecated and cannot be verified by digest; re-push the tag as schema 2 or OCI "
            "(e.g. `crane copy` or `docker buildx imagetools create` from the trusted source), then record it"
        )
    if reason.startswith("insecure"):
        return "plain HTTP is used only for hosts listed as insecure registries; list it if that is intended"
    if "timeout" in reason or "connection" in reason or "dns" in reason:
        return f"check that {registry} is reachable from here (address, port, proxy, firewall)"
    if reason in ("repository not found", "tag not found", "digest not found"):
        return "check the spelling of the image name, and that the credentials can see the repository"
    if reason.startswith("http 5") or reason.startswith("token server"):
        return f"{registry} is having trouble; retry later"
    return "retry later; if it persists, check the registry with `curl -I` on the same URL"
