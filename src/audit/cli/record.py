"""`digest-audit record`: what CI runs at push time to store the trusted digest of a released tag."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
from pathlib import Path

from audit import bootstrap
from audit.app.record import Evidence, Provenance, manifest_evidence, record_images, resolve_image
from audit.cli.common import (
    add_registry_options,
    add_store_options,
    check_replace_reason,
    refuse_unsafe_text,
    settings_from,
)
from audit.cli.packages import record_package
from audit.errors import AuditError, UsageError
from audit.models import Digest, ImageRef
from audit.reference import is_package_spec


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "record",
        help="record the trusted digest of a released tag (run by CI at push time)",
        description="Record IMAGE:TAG@DIGEST as trusted. Recording the same digest again is a no-op; a different "
        "digest for a trusted tag is refused (exit 1) unless --replace --reason TEXT is given, or the tag is "
        "a moving tag (see `digest-audit watch --moving`). Previous records are kept as history.",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("reference", nargs="?", metavar="IMAGE:TAG@DIGEST | pypi:PROJECT==VERSION")
    what.add_argument(
        "--from-buildx-metadata",
        type=Path,
        metavar="FILE",
        help="read image.name and containerimage.digest from a `docker buildx build --metadata-file` file",
    )
    what.add_argument(
        "--resolve",
        metavar="IMAGE:TAG | pypi:PROJECT==VERSION",
        help="record what the registry (or index) serves now (first adoption of an existing release)",
    )
    parser.add_argument(
        "--dist", type=Path, metavar="DIR", help="pypi: the directory CI built the wheels and sdist into (hashed)"
    )
    parser.add_argument("--index-url", metavar="URL", help="pypi: the simple index (default https://pypi.org/simple)")
    parser.add_argument("--source", required=True, help="where the digest came from: CI run URL or free text")
    parser.add_argument("--commit", help="the commit the image was built from")
    parser.add_argument("--recorded-by", help="who records (default: CI actor or the local user)")
    parser.add_argument("--replace", action="store_true", help="replace a different trusted digest (needs --reason)")
    parser.add_argument("--reason", help="why the trusted digest of a pinned tag is replaced")
    parser.add_argument(
        "--offline",
        action="store_true",
        help="do not ask the registry for the media type and platform digests of DIGEST",
    )
    add_store_options(parser)
    add_registry_options(parser)
    parser.set_defaults(handler=run_record)


def run_record(args: argparse.Namespace) -> int:
    check_replace_reason(args.replace, args.reason, changes="trusted digest changes")
    if not args.source.strip():
        raise UsageError("--source is empty", hint='give the CI run URL, e.g. --source "$CI_JOB_URL"')
    for flag, value in (
        ("--source", args.source),
        ("--commit", args.commit),
        ("--recorded-by", args.recorded_by),
    ):
        refuse_unsafe_text(flag, value)
    package = is_package_spec(args.resolve or args.reference or "")
    if not package and (args.dist is not None or args.index_url is not None):
        raise UsageError("--dist and --index-url are for pypi:PROJECT==VERSION", hint="images take IMAGE:TAG@DIGEST")
    app = bootstrap.build(settings_from(args))
    store = app.recorder
    provenance = Provenance(
        source=args.source.strip(),
        recorded_by=args.recorded_by or default_recorder(),
        commit=args.commit,
        replace=args.replace,
        reason=args.reason,
    )
    if package:
        return record_package(args, app, store, provenance)

    if args.from_buildx_metadata is not None:
        refs = buildx_metadata_references(args.from_buildx_metadata)
    elif args.resolve is not None:
        refs = [_unpinned_reference(args.resolve)]
    else:
        refs = [_pinned_reference(args.reference)]

    async def from_registry() -> tuple[list[ImageRef], list[Evidence]]:
        async with app:
            pinned = [await resolve_image(app.registry, refs[0])] if args.resolve is not None else refs
            if args.offline:
                return pinned, [Evidence()] * len(pinned)
            return pinned, await manifest_evidence(app.manifests, pinned)

    if args.offline and args.resolve is None:
        pinned, evidence = refs, [Evidence()] * len(refs)
    else:
        pinned, evidence = asyncio.run(from_registry())
    note = " (resolved from the registry now, not from a CI build)" if args.resolve is not None else ""
    for recorded in record_images(store, pinned, evidence, provenance):
        print(f"{recorded.outcome.value}: {recorded.pinned.familiar}{note}")
    return 0


def _pinned_reference(text: str) -> ImageRef:
    ref = ImageRef.parse(text)
    if ref.digest is None or ref.tag is None:
        raise UsageError(
            f"cannot record {text!r}: it needs both a tag and a digest",
            hint="use IMAGE:TAG@sha256:DIGEST, or --resolve IMAGE:TAG to record what the registry serves now",
        )
    return ref


def buildx_metadata_references(path: Path) -> list[ImageRef]:
    """`image.name` (comma-separated names) with `containerimage.digest` from a buildx metadata file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read buildx metadata file {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(
            f"buildx metadata file {path} is not JSON",
            hint="pass the file written by `docker buildx build --metadata-file FILE`",
        ) from None
    names = data.get("image.name") if isinstance(data, dict) else None
    digest_text = data.get("containerimage.digest") if isinstance(data, dict) else None
    if not isinstance(names, str) or not isinstance(digest_text, str):
        raise UsageError(
            f"buildx metadata file {path} lacks image.name or containerimage.digest",
            hint="build with --push (or push: true) so buildx records the pushed names and digest",
        )
    try:
        digest = Digest.parse(digest_text)
    except AuditError as exc:
        raise UsageError(f"{path}: containerimage.digest: {exc.message}", hint=exc.hint) from None
    refs: list[ImageRef] = []
    for name in (part.strip() for part in names.split(",")):
        if not name:
            continue
        try:
            ref = ImageRef.parse(name)
        except AuditError as exc:
            raise UsageError(f"{path}: image.name: {exc.message}", hint=exc.hint) from None
        refs.append(ImageRef(registry=ref.registry, repository=ref.repository, tag=ref.tag, digest=digest))
    if not refs:
        raise UsageError(f"buildx metadata file {path} names no image", hint="check image.name")
    return refs


def _unpinned_reference(text: str) -> ImageRef:
    ref = ImageRef.parse(text)
    if ref.digest is not None:
        raise UsageError(f"--resolve takes IMAGE:TAG without a digest, not {text!r}")
    return ref


def default_recorder() -> str:
    for variable in ("GITHUB_ACTOR", "GITLAB_USER_LOGIN", "BUILDKITE_BUILD_CREATOR", "USER"):
        value = os.environ.get(variable)
        if value:
            return value
    try:
        return getpass.getuser()
    except OSError:
        return "unknown"
