"""Where registry credentials come from: docker's config.json and helpers, ECR, a JSON secret, or a chain.

Every provider answers `get(registry)` for the host[:port] actually contacted, and never lets a secret reach a
repr, a log line or an exception message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from audit.errors import CredentialsError
from audit.reference import normalise_registry

if TYPE_CHECKING:
    from mypy_boto3_ecr import ECRClient

# What Docker calls Docker Hub in config.json and what it writes to a credential helper for it.
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
# A credential helper answers this username when the secret is an identity (refresh) token.
IDENTITY_TOKEN_USERNAME = "<token>"  # noqa: S105 - a marker, not a secret


@dataclass(frozen=True, slots=True, repr=False)
class Credential:
    """Username/password (sent as Basic) or an identity token (an OAuth2 refresh token for token servers)."""

    username: str | None = None
    password: str | None = None
    identity_token: str | None = None

    def __post_init__(self) -> None:
        if self.identity_token is None and (self.username is None or self.password is None):
            raise CredentialsError("a credential needs a username and a password, or an identity token")

    @classmethod
    def basic(cls, username: str, password: str) -> Credential:
        return cls(username=username, password=password)

    @classmethod
    def token(cls, identity_token: str, username: str | None = None) -> Credential:
        return cls(username=username, identity_token=identity_token)

    def basic_authorization(self) -> str | None:
        """The `Authorization` value for Basic auth, or None for an identity token."""
        if self.identity_token is not None or self.username is None or self.password is None:
            return None
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def __repr__(self) -> str:
        parts = [f"username={self.username!r}"] if self.username is not None else []
        if self.password is not None:
            parts.append("password=<redacted>")
        if self.identity_token is not None:
            parts.append("identity_token=<redacted>")
        return f"Credential({', '.join(parts)})"

    __str__ = __repr__


class CredentialProvider(Protocol):
    async def get(self, registry: str) -> Credential | None:
        """Credentials for `registry` (host[:port] as contacted), or None to go anonymous."""
        ...


def registry_key(text: str) -> str:
    """Fold the ways people write a registry (scheme, path, Docker Hub aliases) into the host contacted."""
    host = text.strip()
    if "://" in host:
        host = host.split("://", 1)[1]
    host = host.split("/", 1)[0]
    return normalise_registry(host)


def credential_from_entry(entry: Mapping[str, object], *, where: str) -> Credential | None:
    """Read one docker-style entry: `auth` (base64 user:pass), `username`+`password`, or `identitytoken`."""
    # `token` is how package-index entries of the credentials secret name an API token.
    identity_token = entry.get("identitytoken", entry.get("identity_token", entry.get("token")))
    username = entry.get("username")
    password = entry.get("password")
    auth = entry.get("auth")
    if identity_token is not None and not isinstance(identity_token, str):
        raise CredentialsError(f"the identity token for {where} is not a string")
    if username is not None and not isinstance(username, str):
        raise CredentialsError(f"the username for {where} is not a string")
    if password is not None and not isinstance(password, str):
        raise CredentialsError(f"the password for {where} is not a string")
    if auth is not None and not isinstance(auth, str):
        raise CredentialsError(f"the auth value for {where} is not a string")
    if identity_token:
        return Credential.token(identity_token, username=username or None)
    if auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise CredentialsError(f"the auth value for {where} is not base64 of user:password") from None
        user, sep, secret = decoded.partition(":")
        if not sep or not user:
            raise CredentialsError(f"the auth value for {where} is not base64 of user:password")
        return Credential.basic(user, secret)
    if username and password is not None:
        return Credential.basic(username, password)
    return None


def _credential_from_helper_output(output: bytes, *, helper: str) -> Credential | None:
    try:
        data = json.loads(output)
    except ValueError:
        raise CredentialsError(f"{helper} printed something that is not JSON") from None
    if not isinstance(data, dict):
        raise CredentialsError(f"{helper} printed JSON that is not an object")
    username = data.get("Username")
    secret = data.get("Secret")
    if not isinstance(secret, str) or not secret:
        return None
    if username == IDENTITY_TOKEN_USERNAME:
        return Credential.token(secret)
    if not isinstance(username, str) or not username:
        raise CredentialsError(f"{helper} returned a secret without a username")
    return Credential.basic(username, secret)


@dataclass(frozen=True, slots=True)
class _DockerConfig:
    auths: dict[str, tuple[str, Mapping[str, object]]]  # registry key -> (key as written, entry)
    cred_helpers: dict[str, tuple[str, str]]  # registry key -> (key as written, helper name)
    creds_store: str | None


class DockerConfigCredentials:
    """Credentials the way `docker login` left them: `auths`, `credHelpers` and `credsStore` of config.json.

    A `credHelpers` entry beats `credsStore`; when a helper knows nothing, a usable `auths` entry is used.
    Helper answers are cached for `cache_ttl` seconds so a run does not spawn a process per request.
    """

    def __init__(
        self,
        config_dir: Path | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        helper_timeout: float = 30.0,
        cache_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._environ = environ if environ is not None else os.environ
        if config_dir is None:
            env_dir = self._environ.get("DOCKER_CONFIG")
            config_dir = Path(env_dir) if env_dir else Path.home() / ".docker"
        self.path = config_dir / "config.json"
        self._helper_timeout = helper_timeout
        self._cache_ttl = cache_ttl
        self._clock = clock
        self._config: _DockerConfig | None = None
        self._helper_cache: dict[tuple[str, str], tuple[Credential | None, float]] = {}

    def __repr__(self) -> str:
        return f"DockerConfigCredentials(path={str(self.path)!r})"

    async def get(self, registry: str) -> Credential | None:
        config = self._load()
        key = registry_key(registry)
        auth_entry = config.auths.get(key)
        helper = config.cred_helpers.get(key)
        credential: Credential | None = None
        if helper is not None:
            credential = await self._from_helper(helper[1], self._server_urls(key, helper[0], auth_entry))
        elif config.creds_store:
            credential = await self._from_helper(config.creds_store, self._server_urls(key, None, auth_entry))
        if credential is None and auth_entry is not None:
            credential = credential_from_entry(auth_entry[1], where=f"{auth_entry[0]!r} in {self.path}")
        return credential

    @staticmethod
    def _server_urls(
        key: str, helper_key: str | None, auth_entry: tuple[str, Mapping[str, object]] | None
    ) -> list[str]:
        # What docker writes to a helper: the Hub's v1 URL, else the host; also try the keys as written.
        urls = [DOCKER_HUB_CONFIG_KEY if key == normalise_registry("docker.io") else key]
        for written in (helper_key, auth_entry[0] if auth_entry else None):
            if written and written not in urls:
                urls.append(written)
        return urls

    def _load(self) -> _DockerConfig:
        if self._config is not None:
            return self._config
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self._config = _DockerConfig({}, {}, None)
            return self._config
        except OSError as exc:
            raise CredentialsError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except ValueError:
            raise CredentialsError(
                f"{self.path} is not valid JSON", hint="fix or remove the file, or run `docker login` again"
            ) from None
        if not isinstance(data, dict):
            raise CredentialsError(f"{self.path} is not a JSON object")
        auths: dict[str, tuple[str, Mapping[str, object]]] = {}
        raw_auths = data.get("auths") or {}
        if isinstance(raw_auths, dict):
            for written, entry in raw_auths.items():
                if not isinstance(entry, dict):
                    continue
                key = registry_key(written)
                # Several spellings of one registry (Docker Hub has four): keep the first with credentials.
                if key not in auths or not _has_secret(auths[key][1]):
                    auths[key] = (written, entry)
        helpers: dict[str, tuple[str, str]] = {}
        raw_helpers = data.get("credHelpers") or {}
        if isinstance(raw_helpers, dict):
            for written, name in raw_helpers.items():
                if isinstance(name, str) and name:
                    helpers.setdefault(registry_key(written), (written, name))
        store = data.get("credsStore")
        self._config = _DockerConfig(auths, helpers, store if isinstance(store, str) and store else None)
        return self._config

    async def _from_helper(self, helper: str, server_urls: list[str]) -> Credential | None:
        for server_url in server_urls:
            cache_key = (helper, server_url)
            cached = self._helper_cache.get(cache_key)
            if cached is not None and cached[1] > self._clock():
                credential = cached[0]
            else:
                credential = await self._run_helper(helper, server_url)
                self._helper_cache[cache_key] = (credential, self._clock() + self._cache_ttl)
            if credential is not None:
                return credential
        return None

    async def _run_helper(self, helper: str, server_url: str) -> Credential | None:
        program = f"docker-credential-{helper}"
        executable = shutil.which(program, path=self._environ.get("PATH"))
        if executable is None:
            raise CredentialsError(
                f"credential helper {program} named in {self.path} is not on PATH",
                hint=f"install {program}, or remove it from credHelpers/credsStore in {self.path}",
            )
        process = await asyncio.create_subprocess_exec(
            executable,
            "get",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(self._environ),
        )
        try:
            async with asyncio.timeout(self._helper_timeout):
                stdout, stderr = await process.communicate(server_url.encode())
        except TimeoutError:
            process.kill()
            await process.wait()
            raise CredentialsError(f"{program} did not answer within {self._helper_timeout:g} s") from None
        if process.returncode != 0:
            # The helper protocol says "not found" in text; anything else is a real failure. Neither output is
            # echoed, as helpers may print secrets in their diagnostics.
            if b"credentials not found" in (stdout + stderr).lower():
                return None
            raise CredentialsError(f"{program} get failed with exit code {process.returncode}")
        return _credential_from_helper_output(stdout, helper=program)


def _has_secret(entry: Mapping[str, object]) -> bool:
    return any(entry.get(name) for name in ("auth", "password", "identitytoken", "identity_token"))


_ECR_HOST_RE = re.compile(
    r"^(?P<account>[0-9]{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)"
    r"\.(?:amazonaws\.com|amazonaws\.com\.cn|c2s\.ic\.gov|sc2s\.sgov\.gov)$"
)


def ecr_region(registry: str) -> str | None:
    """The AWS region of an ECR registry host, or None if the host is not ECR."""
    match = _ECR_HOST_RE.match(registry.lower())
    return match.group("region") if match else None


def _default_ecr_client(region: str) -> ECRClient:
    import boto3  # noqa: PLC0415 - boto3 costs ~100 ms at import; only ECR users pay it

    # A session per client: boto3's default session is not safe to share across threads.
    return boto3.session.Session().client("ecr", region_name=region)


class EcrCredentials:
    """Basic credentials for `<account>.dkr.ecr.<region>.amazonaws.com` from ecr:GetAuthorizationToken.

    A token is valid for every ECR registry the principal can read in its region, so it is cached per region
    until `expiresAt` minus `margin`. The boto3 call runs in a thread so it does not stall the event loop.
    """

    def __init__(
        self,
        client_factory: Callable[[str], ECRClient] | None = None,
        *,
        margin: float = 600.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._client_factory = client_factory or _default_ecr_client
        self._margin = margin
        self._wall_clock = wall_clock
        self._clients: dict[str, ECRClient] = {}
        self._cache: dict[str, tuple[Credential, float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def __repr__(self) -> str:
        return f"EcrCredentials(regions={sorted(self._cache)!r})"

    async def get(self, registry: str) -> Credential | None:
        region = ecr_region(registry)
        if region is None:
            return None
        cached = self._cache.get(region)
        if cached is not None and cached[1] > self._wall_clock():
            return cached[0]
        async with self._locks.setdefault(region, asyncio.Lock()):
            cached = self._cache.get(region)
            if cached is not None and cached[1] > self._wall_clock():
                return cached[0]
            credential, expires_at = await asyncio.to_thread(self._fetch, region)
            self._cache[region] = (credential, expires_at - self._margin)
            return credential

    def _fetch(self, region: str) -> tuple[Credential, float]:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415 - see _default_ecr_client

        try:
            client = self._clients.get(region)
            if client is None:
                client = self._clients[region] = self._client_factory(region)
            response = client.get_authorization_token()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "unknown")
            raise CredentialsError(
                f"cannot get an ECR authorization token in {region}: {code}",
                hint="check the AWS credentials and the ecr:GetAuthorizationToken permission",
            ) from None
        except BotoCoreError as exc:
            raise CredentialsError(
                f"cannot get an ECR authorization token in {region}: {type(exc).__name__}",
                hint="check the AWS credentials and the ecr:GetAuthorizationToken permission",
            ) from None
        data = response.get("authorizationData") or []
        token = data[0].get("authorizationToken") if data else None
        if not token:
            raise CredentialsError(f"ECR returned no authorization token in {region}")
        try:
            user, sep, password = base64.b64decode(token, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise CredentialsError(f"ECR returned a malformed authorization token in {region}") from None
        if not sep or not user:
            raise CredentialsError(f"ECR returned a malformed authorization token in {region}")
        expires = data[0].get("expiresAt")
        # The documented lifetime is 12 hours; without expiresAt assume one hour to stay on the safe side.
        expires_at = expires.timestamp() if expires is not None else self._wall_clock() + 3600.0
        return Credential.basic(user, password), expires_at


class StaticCredentials:
    """Credentials from a JSON mapping `{"host": {"username", "password"} | {"auth"} | {"identitytoken"}}`.

    This is what the Lambda reads from Secrets Manager; a docker config.json (`{"auths": {...}}`) works too.
    """

    def __init__(self, entries: Mapping[str, Credential]) -> None:
        self._entries = {registry_key(host): credential for host, credential in entries.items()}

    def __repr__(self) -> str:
        return f"StaticCredentials(registries={sorted(self._entries)!r})"

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "the credentials secret") -> StaticCredentials:
        """The secret's text as stored; the one parser of it (the Lambda's wiring calls this)."""
        try:
            data = json.loads(text)
        except ValueError:
            raise CredentialsError(
                f"{source} is not valid JSON",
                hint='store {"registry.example.com": {"username": "...", "password": "..."}}',
            ) from None
        return cls.from_mapping(data, source=source)

    @classmethod
    def from_mapping(cls, data: object, *, source: str = "the credentials secret") -> StaticCredentials:
        if isinstance(data, dict) and isinstance(data.get("auths"), dict):
            data = data["auths"]
        if not isinstance(data, dict):
            raise CredentialsError(
                f"{source} must be a JSON object of registry host to credentials",
                hint='e.g. {"ghcr.io": {"username": "bot", "password": "..."}}',
            )
        entries: dict[str, Credential] = {}
        for host, entry in data.items():
            if not isinstance(entry, dict):
                raise CredentialsError(f"the entry for {host!r} in {source} is not an object")
            credential = credential_from_entry(entry, where=f"{host!r} in {source}")
            if credential is None:
                raise CredentialsError(
                    f"the entry for {host!r} in {source} has no credentials",
                    hint="give username and password, auth (base64 of user:password) or identitytoken",
                )
            entries[str(host)] = credential
        return cls(entries)

    async def get(self, registry: str) -> Credential | None:
        return self._entries.get(registry_key(registry))


class ChainCredentials:
    """Ask each provider in turn; the first answer that is not None wins."""

    def __init__(self, *providers: CredentialProvider) -> None:
        self.providers = providers

    def __repr__(self) -> str:
        return f"ChainCredentials({', '.join(repr(p) for p in self.providers)})"

    async def get(self, registry: str) -> Credential | None:
        for provider in self.providers:
            credential = await provider.get(registry)
            if credential is not None:
                return credential
        return None
