"""`record`: what CI runs at push time to store trusted digests, for an image tag or each file of a `pypi:` release.

The record rules (pinned or moving, replace with a reason, same digest is a no-op) are `record_rules` and
`recording.record_trusted`; this module builds the records: the registry's evidence of an image digest (media
type, platform digests, fetched by digest so a tag cannot mislead), and the files a release has on the index for a
first adoption (`--resolve`), each hashed from the bytes the index serves.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from audit.app.recording import record_trusted
from audit.errors import PackageIndexError, RegistryError, UsageError
from audit.models import Digest, ImageRef, LiveStatus, MediaType, RecordOutcome, utcnow
from audit.packages import DistFilename, PackageSpec, normalise_version, registry_key
from audit.ports import ManifestReader, PackageIndex, Registry, TrustRecorder
from audit.records import TrustedImage


@dataclass(frozen=True)
class Provenance:
    """Where a recorded digest came from and who records it; `reason` only goes with `replace`."""

    source: str
    recorded_by: str
    commit: str | None = None
    replace: bool = False
    reason: str | None = None


@dataclass(frozen=True)
class Evidence:
    """What the registry says about the digest being recorded (nothing, when recorded offline)."""

    media_type: MediaType | None = None
    platforms: dict[str, Digest] | None = None


@dataclass(frozen=True)
class Recorded:
    """One record written (or found unchanged)."""

    outcome: RecordOutcome
    item: TrustedImage

    @property
    def pinned(self) -> ImageRef:
        """IMAGE:TAG@DIGEST of the record."""
        item = self.item
        return ImageRef(registry=item.registry, repository=item.repository, tag=item.tag, digest=item.digest)


# --------------------------------------------------------------------------------------------------- images


async def resolve_image(registry: Registry, ref: ImageRef) -> ImageRef:
    """First adoption: `ref` (a tag; a digest in it is ignored) pinned to the digest the registry serves now."""
    observation = await registry.observe(ref)
    if observation.status is not LiveStatus.FOUND or observation.live_digest is None:
        raise RegistryError(
            f"cannot resolve {ref.familiar}: {observation.reason or observation.status.value}",
            hint="check the name, the tag and the registry credentials",
        )
    return ImageRef(registry=ref.registry, repository=ref.repository, tag=ref.tag, digest=observation.live_digest)


async def manifest_evidence(manifests: ManifestReader, refs: Sequence[ImageRef]) -> list[Evidence]:
    """Media type and child digests of each digest to record; a digest the registry does not serve is refused."""
    return [await _evidence_of(manifests, ref) for ref in refs]


async def _evidence_of(manifests: ManifestReader, ref: ImageRef) -> Evidence:
    by_digest = ImageRef(registry=ref.registry, repository=ref.repository, digest=ref.digest)
    try:
        manifest = await manifests.fetch_manifest(by_digest)
    except RegistryError as exc:
        raise RegistryError(
            f"cannot read {by_digest.familiar} from the registry to record it: {exc.reason or exc.message}",
            hint="record only digests the registry serves, or pass --offline to record without checking",
        ) from None
    return Evidence(manifest.media_type, manifest.platforms if manifest.media_type.is_index else None)


def record_images(
    store: TrustRecorder, refs: Sequence[ImageRef], evidence: Sequence[Evidence], provenance: Provenance
) -> Iterator[Recorded]:
    """Record each IMAGE:TAG@DIGEST with its evidence, one at a time (a conflict stops at that reference)."""
    for ref, found in zip(refs, evidence, strict=True):
        if ref.tag is None or ref.digest is None:
            raise UsageError(f"cannot record {ref.familiar!r}: it needs both a tag and a digest")
        item = TrustedImage(
            registry=ref.registry,
            repository=ref.repository,
            tag=ref.tag,
            digest=ref.digest,
            platforms=found.platforms,
            media_type=found.media_type,
            source=provenance.source,
            commit=provenance.commit,
            recorded_at=utcnow(),
            recorded_by=provenance.recorded_by,
            reason=provenance.reason,
        )
        yield Recorded(record_trusted(store, item, replace=provenance.replace), item)


# --------------------------------------------------------------------------------------------------- pypi:


async def resolve_release(index: PackageIndex, index_url: str, spec: PackageSpec) -> list[tuple[DistFilename, Digest]]:
    """First adoption: the files the index serves now for the release, each hashed from its bytes."""
    assert spec.version is not None
    page = await index.project_page(index_url, spec.project)
    files = [
        f for f in page.files if f.name.project == spec.project and f.name.release == normalise_version(spec.version)
    ]
    if not files:
        raise PackageIndexError(
            f"{index_url} serves no file of {spec.project}=={spec.version}", hint="check the version and --index-url"
        )
    resolved: list[tuple[DistFilename, Digest]] = []
    for file in files:
        hashed = await index.file_digest(index_url, file)
        if file.sha256 is not None and hashed != file.sha256:
            raise PackageIndexError(
                f"{file.filename}: the index lists {file.sha256} but serves bytes hashing to {hashed}",
                hint="the index contradicts itself: do not adopt this release before finding out why",
            )
        resolved.append((file.name, hashed))
    return resolved


def record_release(
    store: TrustRecorder,
    index_url: str,
    spec: PackageSpec,
    files: Iterable[tuple[DistFilename, Digest]],
    provenance: Provenance,
) -> Iterator[Recorded]:
    """Record the sha256 of each file of a release, keyed by the index and the project (the tag is the filename)."""
    for name, digest in files:
        item = TrustedImage(
            registry=registry_key(index_url),
            repository=spec.project,
            tag=name.filename,
            digest=digest,
            source=provenance.source,
            commit=provenance.commit,
            recorded_at=utcnow(),
            recorded_by=provenance.recorded_by,
            reason=provenance.reason,
        )
        yield Recorded(record_trusted(store, item, replace=provenance.replace), item)
