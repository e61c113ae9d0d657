"""Pushes real images of every manifest kind to a local registry over the distribution API (test set-up).

Each image gets its own config and layer (from a random or given seed), so deleting one digest never takes
other tags with it. Works with no auth, Basic auth and token auth (fetched from the realm, or minted
in-process so the token server's request counts only show the client under test).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import secrets
import ssl
import tarfile
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NamedTuple, override

import httpx

from audit.models import MediaType

if TYPE_CHECKING:
    from tests.support.token_server import TokenServer

type ImageKind = Literal["docker", "oci", "oci-index", "docker-list"]

DEFAULT_PLATFORM = "linux/amd64"
DEFAULT_INDEX_PLATFORMS = ("linux/amd64", "linux/arm64/v8")

_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
_REPOSITORY_IN_PATH = re.compile(r"^/v2/(?P<name>.+?)/(?:blobs|manifests|tags)/")
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class Credentials(NamedTuple):
    """A username and password; a tuple, so it can be passed straight to httpx as `auth=`."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"


class PushError(RuntimeError):
    """The registry refused a push, upload or delete; the message has the status and the error body."""


@dataclass(frozen=True)
class PushedImage:
    """What was pushed: the digest of the exact manifest bytes PUT; for an index, each child by platform."""

    repository: str
    tag: str | None
    digest: str
    media_type: MediaType
    manifest: bytes = field(repr=False)
    platforms: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.manifest)


def sha256_digest(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


def _json_bytes(document: object) -> bytes:
    # Docker's tools indent manifests with three spaces; any stable form works, the bytes are what count.
    return json.dumps(document, indent=3).encode("utf-8")


def _platform_fields(platform: str) -> dict[str, str]:
    parts = platform.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"platform must be os/arch[/variant], got {platform!r}")
    fields = {"os": parts[0], "architecture": parts[1]}
    if len(parts) == 3:
        fields["variant"] = parts[2]
    return fields


def _layer(nonce: str) -> tuple[bytes, str]:
    """A gzipped tar with one file named after the nonce; returns (compressed blob, diff_id of the tar)."""
    payload = f"digest-audit test layer {nonce}\n".encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        member = tarfile.TarInfo(name="digest-audit/layer.txt")
        member.size = len(payload)
        member.mode = 0o644
        archive.addfile(member, io.BytesIO(payload))
    tar_bytes = buffer.getvalue()
    return gzip.compress(tar_bytes, mtime=0), sha256_digest(tar_bytes)


class RegistryAuth(httpx.Auth):
    """Answers a registry's 401 challenge: Basic, or Bearer with a token for the challenged scope.

    Tokens come from the challenge's realm over HTTP (with `credentials` as Basic auth), or, when
    `token_server` is given, are minted in-process without touching its request log. Sync clients only.
    """

    requires_request_body = True

    def __init__(
        self,
        *,
        credentials: Credentials | None = None,
        verify: ssl.SSLContext | bool = True,
        token_server: TokenServer | None = None,
    ) -> None:
        self._credentials = credentials
        self._verify = verify
        self._token_server = token_server
        self._tokens: dict[str, str] = {}  # repository name -> bearer token
        self._basic = False

    @override
    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        repository = self._repository(request)
        self._authorise(request, repository)
        response = yield request
        if response.status_code != 401:
            return
        challenge = response.headers.get("WWW-Authenticate", "")
        scheme, _, rest = challenge.partition(" ")
        if scheme.lower() == "basic" and self._credentials is not None:
            self._basic = True
        elif scheme.lower() == "bearer":
            params = dict(_CHALLENGE_PARAM.findall(rest))
            token = self._fetch_token(params.get("realm", ""), params.get("service", ""), params.get("scope"))
            self._tokens[repository or ""] = token
        else:
            return
        self._authorise(request, repository)
        yield request

    def _authorise(self, request: httpx.Request, repository: str | None) -> None:
        if self._basic and self._credentials is not None:
            pair = f"{self._credentials.username}:{self._credentials.password}".encode()
            request.headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        elif (token := self._tokens.get(repository or "")) is not None:
            request.headers["Authorization"] = f"Bearer {token}"

    @staticmethod
    def _repository(request: httpx.Request) -> str | None:
        match = _REPOSITORY_IN_PATH.match(request.url.path)
        return match.group("name") if match else None

    def _fetch_token(self, realm: str, service: str, scope: str | None) -> str:
        scopes = scope.split(" ") if scope else []
        if self._token_server is not None:
            subject = self._credentials.username if self._credentials is not None else "pusher"
            return self._token_server.mint(subject, scopes)
        params = httpx.QueryParams([("service", service), *(("scope", s) for s in scopes)])
        auth = httpx.BasicAuth(*self._credentials) if self._credentials is not None else None
        with httpx.Client(verify=self._verify, timeout=10.0, trust_env=False) as client:
            response = client.get(realm, params=params, auth=auth)
        if response.status_code != 200:
            raise PushError(f"token request to {realm} failed with HTTP {response.status_code}")
        body = response.json()
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str):
            raise PushError(f"token response from {realm} had no token")
        return token


class Pusher:
    """A small distribution-API client to set up registry contents: blobs, manifests, indexes, deletes."""

    def __init__(
        self,
        base_url: str,
        *,
        verify: ssl.SSLContext | bool = True,
        auth: httpx.Auth | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(base_url=self.base_url, verify=verify, auth=auth, timeout=timeout, trust_env=False)
        self._pushed: dict[tuple[str, str], tuple[ImageKind, tuple[str, ...]]] = {}

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Pusher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- images ---------------------------------------------------------------------------------------------

    def push_image(
        self,
        repository: str,
        tag: str | None,
        kind: ImageKind = "docker",
        platforms: Sequence[str] | None = None,
        *,
        seed: str | None = None,
    ) -> PushedImage:
        """Push a complete image; `tag=None` pushes by digest only. Same seed and kind give the same digest.

        For "docker"/"oci", `platforms` may name the one platform (default linux/amd64). For indexes, children
        are pushed by digest first, one per platform (default linux/amd64 and linux/arm64/v8).
        """
        nonce = seed if seed is not None else secrets.token_hex(16)
        if kind in ("docker", "oci"):
            platform = platforms[0] if platforms else DEFAULT_PLATFORM
            image = self._push_single(repository, tag, oci=kind == "oci", platform=platform, nonce=nonce)
            chosen: tuple[str, ...] = (platform,)
        elif kind in ("oci-index", "docker-list"):
            chosen = tuple(platforms) if platforms else DEFAULT_INDEX_PLATFORMS
            image = self._push_index(repository, tag, oci=kind == "oci-index", platforms=chosen, nonce=nonce)
        else:
            raise ValueError(f"unknown image kind {kind!r}")
        if tag is not None:
            self._pushed[(repository, tag)] = (kind, chosen)
        return image

    def tamper(
        self,
        repository: str,
        tag: str,
        kind: ImageKind | None = None,
        platforms: Sequence[str] | None = None,
    ) -> PushedImage:
        """Re-push `tag` with new content (of the kind last pushed there unless given): its digest changes."""
        last_kind, last_platforms = self._pushed.get((repository, tag), ("docker", (DEFAULT_PLATFORM,)))
        return self.push_image(
            repository, tag, kind or last_kind, platforms if platforms is not None else last_platforms
        )

    def tag(self, image: PushedImage, tag: str, repository: str | None = None) -> PushedImage:
        """Put the exact manifest bytes of `image` under another tag (same digest)."""
        target = repository or image.repository
        self.push_manifest(target, tag, image.manifest, image.media_type)
        return PushedImage(target, tag, image.digest, image.media_type, image.manifest, dict(image.platforms))

    def delete_manifest(self, repository: str, digest: str) -> None:
        """Delete by digest (distribution cannot delete a tag alone); every tag pointing at it disappears."""
        response = self._client.delete(f"/v2/{repository}/manifests/{digest}")
        self._expect(response, 202, f"delete {repository}@{digest}")

    # --- raw API --------------------------------------------------------------------------------------------

    def push_blob(self, repository: str, content: bytes) -> str:
        """Monolithic upload (POST then PUT with the digest); skipped when the blob is already there."""
        digest = sha256_digest(content)
        if self._client.head(f"/v2/{repository}/blobs/{digest}").status_code == 200:
            return digest
        started = self._client.post(f"/v2/{repository}/blobs/uploads/")
        self._expect(started, 202, f"start upload to {repository}")
        location = started.headers.get("Location")
        if not location:
            raise PushError(f"upload to {repository}: registry sent no Location")
        # Location keeps the upload state in its query; httpx's `params=` would replace it, so merge by hand.
        target = httpx.URL(location).copy_merge_params({"digest": digest})
        finished = self._client.put(
            target,
            content=content,
            headers={"Content-Type": "application/octet-stream"},
        )
        self._expect(finished, 201, f"finish upload of {digest} to {repository}")
        return digest

    def push_manifest(self, repository: str, reference: str, manifest: bytes, media_type: str) -> str:
        """PUT manifest bytes under a tag or digest; returns their digest (checked against the registry's)."""
        digest = sha256_digest(manifest)
        response = self._client.put(
            f"/v2/{repository}/manifests/{reference}", content=manifest, headers={"Content-Type": media_type}
        )
        self._expect(response, 201, f"push manifest {repository}:{reference}")
        answered = response.headers.get("Docker-Content-Digest")
        if answered is not None and answered != digest:
            raise PushError(f"registry stored {repository}:{reference} as {answered}, expected {digest}")
        return digest

    # --- building -------------------------------------------------------------------------------------------

    def _push_single(
        self, repository: str, reference: str | None, *, oci: bool, platform: str, nonce: str
    ) -> PushedImage:
        platform_fields = _platform_fields(platform)
        layer, diff_id = _layer(nonce)
        config = _json_bytes(
            {
                **platform_fields,
                "config": {"Labels": {"org.digest-audit.test-nonce": nonce}},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "history": [{"created_by": "digest-audit test pusher"}],
            }
        )
        config_digest = self.push_blob(repository, config)
        layer_digest = self.push_blob(repository, layer)
        media_type = MediaType.OCI_MANIFEST if oci else MediaType.DOCKER_MANIFEST
        manifest = _json_bytes(
            {
                "schemaVersion": 2,
                "mediaType": media_type.value,
                "config": {
                    "mediaType": _OCI_CONFIG if oci else _DOCKER_CONFIG,
                    "size": len(config),
                    "digest": config_digest,
                },
                "layers": [
                    {
                        "mediaType": _OCI_LAYER if oci else _DOCKER_LAYER,
                        "size": len(layer),
                        "digest": layer_digest,
                    }
                ],
            }
        )
        digest = self.push_manifest(repository, reference or sha256_digest(manifest), manifest, media_type)
        return PushedImage(repository, reference, digest, media_type, manifest)

    def _push_index(
        self, repository: str, tag: str | None, *, oci: bool, platforms: Sequence[str], nonce: str
    ) -> PushedImage:
        if len(set(platforms)) != len(platforms):
            raise ValueError("index platforms must be distinct")
        entries: list[dict[str, object]] = []
        children: dict[str, str] = {}
        for platform in platforms:
            child = self._push_single(repository, None, oci=oci, platform=platform, nonce=f"{nonce}/{platform}")
            children[platform] = child.digest
            entries.append(
                {
                    "mediaType": child.media_type.value,
                    "size": child.size,
                    "digest": child.digest,
                    "platform": _platform_fields(platform),
                }
            )
        media_type = MediaType.OCI_INDEX if oci else MediaType.DOCKER_LIST
        index = _json_bytes({"schemaVersion": 2, "mediaType": media_type.value, "manifests": entries})
        digest = self.push_manifest(repository, tag or sha256_digest(index), index, media_type)
        return PushedImage(repository, tag, digest, media_type, index, children)

    @staticmethod
    def _expect(response: httpx.Response, status: int, action: str) -> None:
        if response.status_code != status:
            raise PushError(f"{action}: HTTP {response.status_code}: {response.text[:500]}")
