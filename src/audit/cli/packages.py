"""The `pypi:` forms of `record`, `check` and `watch`: Python package releases audited beside images.

`record` hashes the files CI built in `--dist` (never what the index serves afterwards), `check` lists what the
index serves for a release, one row per file, and `watch` sets new-release tracking for a project.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from audit import bootstrap
from audit.cli.common import err, print_json, render_table
from audit.config import RegistryOptions
from audit.errors import AuditError, PackageIndexError, ProjectNotFoundError, UsageError
from audit.models import Digest, TrustedImage, Verdict, WatchSettings, iso_utc, utcnow
from audit.packages import (
    DEFAULT_INDEX_URL,
    DistFilename,
    IndexFile,
    PackageSpec,
    normalise_version,
    parse_filename,
    parse_index_url,
    registry_key,
)
from audit.ports import PackageIndex, TrustRecorder
from audit.recording import record_trusted
from audit.reference import is_valid_tag
from audit.untrusted import printable

#: A dist/ directory holds a handful of files; more than this is the wrong directory.
MAX_DIST_FILES = 200


def index_url_from(args: argparse.Namespace, options: RegistryOptions) -> str:
    return parse_index_url(args.index_url or DEFAULT_INDEX_URL, insecure_hosts=options.insecure_registries)


# --------------------------------------------------------------------------------------------------- record


def dist_files(directory: Path, spec: PackageSpec) -> list[tuple[DistFilename, Digest]]:
    """The wheels and sdists of `spec` in `directory`, hashed; anything else there that is a distribution of
    another project or version is an error (a stale dist/ must not be recorded as this release)."""
    if not directory.is_dir():
        raise UsageError(f"--dist {directory} is not a directory", hint="pass the directory `python -m build` wrote")
    assert spec.version is not None
    found: list[tuple[DistFilename, Digest]] = []
    entries = sorted(directory.iterdir())
    if len(entries) > MAX_DIST_FILES:
        raise UsageError(f"--dist {directory} holds {len(entries)} entries", hint="pass the build's own dist/")
    for path in entries:
        name = parse_filename(path.name)
        if name is None or not path.is_file():
            continue  # .gitignore and friends: not distributions
        if name.project != spec.project or name.release != normalise_version(spec.version):
            raise UsageError(
                f"--dist {directory} holds {printable(path.name)}, which is not {spec.project}=={spec.version}",
                hint="build into a clean directory (rm -rf dist && python -m build) and record that",
            )
        if not is_valid_tag(name.filename):
            raise UsageError(
                f"cannot record {printable(path.name)} yet: trust keys take filenames of at most 128 characters "
                "without '!' (epoch) or '+' (local version)",
                hint="record the release's other files, or rename the build (no local version) and rebuild",
            )
        found.append((name, _hash_file(path)))
    if not found:
        raise UsageError(
            f"--dist {directory} holds no wheel or sdist of {spec.project}=={spec.version}",
            hint="run the build first (python -m build) and pass its output directory",
        )
    return found


def _hash_file(path: Path) -> Digest:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1024 * 1024), b""):
                digest.update(chunk)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    return Digest(algorithm="sha256", hex=digest.hexdigest())


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


def record_package(
    args: argparse.Namespace, options: RegistryOptions, store: TrustRecorder, *, recorded_by: str
) -> int:
    text = args.resolve if args.resolve is not None else args.reference
    spec = PackageSpec.parse(text, require_version=True)
    index_url = index_url_from(args, options)
    if args.resolve is not None:
        if args.dist is not None:
            raise UsageError("--resolve and --dist go separately", hint="--dist records what CI built")
        files = asyncio.run(_resolve(options, index_url, spec))
    else:
        if args.dist is None:
            raise UsageError(
                f"recording {text} needs --dist DIR",
                hint="pass the directory CI built the wheels and sdist into; or --resolve for first adoption",
            )
        files = dist_files(args.dist, spec)
    note = " (resolved from the index now, not from a CI build)" if args.resolve is not None else ""
    for name, digest in files:
        item = TrustedImage(
            registry=registry_key(index_url),
            repository=spec.project,
            tag=name.filename,
            digest=digest,
            source=args.source.strip(),
            commit=args.commit,
            recorded_at=utcnow(),
            recorded_by=recorded_by,
            reason=args.reason,
        )
        outcome = record_trusted(store, item, replace=args.replace)
        print(f"{outcome.value}: {item.ref.familiar} {digest}{note}")
    return 0


async def _resolve(options: RegistryOptions, index_url: str, spec: PackageSpec) -> list[tuple[DistFilename, Digest]]:
    async with bootstrap.package_index(options, netrc=True) as index:
        return await resolve_release(index, index_url, spec)


# --------------------------------------------------------------------------------------------------- check


async def check_rows(index: PackageIndex, index_url: str, typed: str, spec: PackageSpec) -> list[dict[str, Any]]:
    """One row per file the index serves for the release (`resolved`), or one `missing`/`unverifiable` row."""
    registry = registry_key(index_url)

    def row(
        status: Verdict, *, file: IndexFile | None = None, live: Digest | None = None, reason: str | None = None
    ) -> dict[str, Any]:
        return {
            "reference": typed,
            "registry": registry,
            "repository": spec.project,
            "tag": file.filename if file else None,
            "filename": file.filename if file else None,
            "version": file.name.version if file else spec.version,
            "trusted_digest": None,
            "live_digest": str(live) if live else None,
            "status": status.value,
            "reason": reason,
            "checked_at": iso_utc(utcnow()),
            "yanked": file.yanked if file else None,
            "upload_time": file.upload_time if file else None,
            "size": file.size if file else None,
        }

    try:
        page = await index.project_page(index_url, spec.project)
    except ProjectNotFoundError as exc:
        return [row(Verdict.MISSING, reason=exc.message)]
    except AuditError as exc:
        return [row(Verdict.UNVERIFIABLE, reason=exc.message)]
    wanted = normalise_version(spec.version) if spec.version else None
    files = [f for f in page.files if f.name.project == spec.project and (wanted is None or f.name.release == wanted)]
    if not files:
        reason = f"the index lists no file of {spec.project}=={spec.version}"
        if page.truncated:
            return [row(Verdict.UNVERIFIABLE, reason=f"{reason} among the files read (the page is truncated)")]
        return [row(Verdict.MISSING, reason=reason)]
    rows = []
    for file in files:
        yanked = f"yanked ({file.yanked or 'no reason given'})" if file.yanked is not None else None
        if file.sha256 is not None:
            rows.append(row(Verdict.RESOLVED, file=file, live=file.sha256, reason=yanked))
            continue
        try:  # the index gave no sha256: hash the bytes it serves
            hashed = await index.file_digest(index_url, file)
        except AuditError as exc:
            rows.append(row(Verdict.UNVERIFIABLE, file=file, reason=exc.message))
            continue
        rows.append(row(Verdict.RESOLVED, file=file, live=hashed, reason=yanked or "hashed from the served bytes"))
    return rows


def run_check_packages(args: argparse.Namespace, options: RegistryOptions, typed: Sequence[str]) -> int:
    specs = [(text, PackageSpec.parse(text, require_version=False)) for text in typed]
    index_url = index_url_from(args, options)

    async def gather() -> list[dict[str, Any]]:
        async with bootstrap.package_index(options, netrc=True) as index:
            per_spec = await asyncio.gather(*(check_rows(index, index_url, text, spec) for text, spec in specs))
        return [row for rows in per_spec for row in rows]

    rows = asyncio.run(gather())
    if args.json:
        print_json(rows)
    else:
        body = [
            [
                printable(str(r["filename"] or r["reference"])),
                r["status"].upper(),
                str(r["live_digest"] or "-"),
                printable(str(r["reason"] or "")),
            ]
            for r in rows
        ]
        print(render_table(["FILE", "STATUS", "LIVE DIGEST", "REASON"], body))
    counts = Counter(str(r["status"]) for r in rows)
    err(
        f"checked {len(specs)} package(s), {len(rows)} row(s): "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    )
    for r in rows:
        if r["status"] == Verdict.UNVERIFIABLE:
            err(f"  unverifiable: {printable(str(r['reference']))}: {printable(str(r['reason']))}")
    if counts[Verdict.DRIFT] or counts[Verdict.MISSING]:
        return 1
    if counts[Verdict.UNVERIFIABLE]:
        return 3
    return 0


# --------------------------------------------------------------------------------------------------- watch


def package_watch_settings(
    args: argparse.Namespace, options: RegistryOptions, current_of: Any
) -> tuple[WatchSettings, WatchSettings]:
    """(current, updated) settings of a `pypi:PROJECT`; only new-release tracking applies to packages."""
    spec = PackageSpec.parse(args.image, require_version=False)
    if spec.version is not None:
        raise UsageError(f"watch takes pypi:PROJECT without a version, not {args.image!r}")
    if args.ignore or args.no_ignore or args.moving or args.pinned:
        raise UsageError("--ignore, --moving and --pinned are for images", hint="packages take --track-new-releases")
    registry = registry_key(index_url_from(args, options))
    current = current_of(f"{registry}/{spec.project}") or WatchSettings(registry=registry, repository=spec.project)
    updated = current.model_copy(
        update={"track_new_tags": current.track_new_tags if args.track is None else args.track}
    )
    return current, updated
