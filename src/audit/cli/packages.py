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
from audit.app.package_check import check_rows
from audit.app.record import Provenance, record_release, resolve_release
from audit.app.watch import update_package_watch
from audit.cli.common import err, print_json, render_table
from audit.errors import UsageError
from audit.models import Digest, Verdict
from audit.packages import (
    DEFAULT_INDEX_URL,
    DistFilename,
    PackageSpec,
    normalise_version,
    parse_filename,
    parse_index_url,
    registry_key,
)
from audit.ports import TrustRecorder
from audit.records import WatchSettings
from audit.reference import is_valid_tag
from audit.untrusted import printable

#: A dist/ directory holds a handful of files; more than this is the wrong directory.
MAX_DIST_FILES = 200


def index_url_from(args: argparse.Namespace, app: bootstrap.App) -> str:
    insecure = app.settings.registry.insecure_registries
    return parse_index_url(args.index_url or DEFAULT_INDEX_URL, insecure_hosts=insecure)


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


def record_package(args: argparse.Namespace, app: bootstrap.App, store: TrustRecorder, provenance: Provenance) -> int:
    text = args.resolve if args.resolve is not None else args.reference
    spec = PackageSpec.parse(text, require_version=True)
    index_url = index_url_from(args, app)
    if args.resolve is not None:
        if args.dist is not None:
            raise UsageError("--resolve and --dist go separately", hint="--dist records what CI built")
        files = asyncio.run(_resolve(app, index_url, spec))
    else:
        if args.dist is None:
            raise UsageError(
                f"recording {text} needs --dist DIR",
                hint="pass the directory CI built the wheels and sdist into; or --resolve for first adoption",
            )
        files = dist_files(args.dist, spec)
    note = " (resolved from the index now, not from a CI build)" if args.resolve is not None else ""
    for recorded in record_release(store, index_url, spec, files, provenance):
        print(f"{recorded.outcome.value}: {recorded.item.ref.familiar} {recorded.item.digest}{note}")
    return 0


async def _resolve(app: bootstrap.App, index_url: str, spec: PackageSpec) -> list[tuple[DistFilename, Digest]]:
    async with app:
        return await resolve_release(app.packages, index_url, spec)


# --------------------------------------------------------------------------------------------------- check


def run_check_packages(args: argparse.Namespace, app: bootstrap.App, typed: Sequence[str]) -> int:
    specs = [(text, PackageSpec.parse(text, require_version=False)) for text in typed]
    index_url = index_url_from(args, app)

    async def gather() -> list[dict[str, Any]]:
        async with app:
            per_spec = await asyncio.gather(*(check_rows(app.packages, index_url, text, spec) for text, spec in specs))
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


def watch_package(args: argparse.Namespace, app: bootstrap.App, store: TrustRecorder) -> WatchSettings:
    """`watch pypi:PROJECT`: only new-release tracking applies to packages."""
    spec = PackageSpec.parse(args.image, require_version=False)
    if spec.version is not None:
        raise UsageError(f"watch takes pypi:PROJECT without a version, not {args.image!r}")
    if args.ignore or args.no_ignore or args.moving or args.pinned:
        raise UsageError("--ignore, --moving and --pinned are for images", hint="packages take --track-new-releases")
    registry = registry_key(index_url_from(args, app))
    return update_package_watch(store, registry, spec.project, track=args.track)
