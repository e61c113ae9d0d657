"""`digest-audit check`: what digest does each tag have right now, and is it the one I trust?"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from audit import bootstrap
from audit.app.check import CheckResult, check
from audit.cli.common import (
    add_registry_options,
    err,
    parse_references,
    print_json,
    registry_options_from,
    render_table,
)
from audit.config import Settings
from audit.errors import UsageError
from audit.models import Verdict, iso_utc
from audit.platforms import Platform
from audit.reference import is_package_spec
from audit.untrusted import printable

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_UNVERIFIABLE = 3


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "check",
        help="resolve live digests and compare them with pinned ones",
        description="Resolve the live digest of each IMAGE[:TAG][@DIGEST]; with @DIGEST, compare. "
        "Exit 0 all fine, 1 drift or missing, 3 unverifiable, 2 usage error.",
    )
    parser.add_argument("references", nargs="*", metavar="IMAGE[@DIGEST] | pypi:PROJECT==VERSION")
    parser.add_argument(
        "-f",
        "--file",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="read references from FILE, one per line (# comments allowed); repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON array on stdout")
    parser.add_argument(
        "--platform",
        metavar="OS/ARCH[/VARIANT]",
        help="compare the child digest of this platform of an index",
    )
    parser.add_argument(
        "--platforms", action="store_true", help="also fetch per-platform child digests of multi-arch tags"
    )
    parser.add_argument("--index-url", metavar="URL", help="pypi: the simple index (default https://pypi.org/simple)")
    add_registry_options(parser)
    parser.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    packages = [text for text in args.references if is_package_spec(text)]
    if packages:
        if len(packages) != len(args.references) or args.file or args.platform or args.platforms:
            raise UsageError(
                "pypi: packages are checked on their own", hint="check images and packages in separate commands"
            )
        # imported here: the package side (recording, watch lists) is not on the path of an image check
        from audit.cli.packages import run_check_packages  # noqa: PLC0415

        return run_check_packages(args, bootstrap.build(Settings(registry=registry_options_from(args))), packages)
    if args.index_url is not None:
        raise UsageError("--index-url is for pypi:PROJECT==VERSION", hint="drop it for images")
    platform = _parse_platform(args.platform)
    references = parse_references(args.references, args.file)
    app = bootstrap.build(Settings(registry=registry_options_from(args)))
    found: list[dict[str, Any] | None] = [None] * len(references)
    absent_at: list[int] = []

    def answered(index: int, result: CheckResult) -> None:
        # Each result becomes its output row at once and is dropped: memory per tag stays one row.
        found[index] = _row(references[index][0], result)
        if result.platform_absent:
            absent_at.append(index)

    async def check_all() -> None:
        async with app:
            await check(
                app.registry,
                [ref for _, ref in references],
                platform=platform,
                platforms=bool(args.platforms),
                workers=app.settings.registry.check_workers,
                answered=answered,
            )

    asyncio.run(check_all())
    rows = [row for row in found if row is not None]
    absent = [references[index][0] for index in sorted(absent_at)]
    if args.json:
        print_json(rows)
    else:
        print(_table(rows))
    counts = Counter(row["status"] for row in rows)
    _summarise(rows, counts)
    if counts[Verdict.DRIFT] or counts[Verdict.MISSING]:
        return EXIT_PROBLEM
    if absent:
        # The tag exists; the question named a platform it was never built for. Say which ones it has.
        err(f"digest-audit: error: platform {platform} is not in the index of {printable(', '.join(absent))}")
        err("  hint: use one of the platforms the reason lists, e.g. --platform linux/amd64")
        return EXIT_USAGE
    if counts[Verdict.UNVERIFIABLE]:
        return EXIT_UNVERIFIABLE
    return EXIT_OK


def _parse_platform(text: str | None) -> Platform | None:
    if text is None:
        return None
    try:
        return Platform.parse(text)
    except UsageError as exc:
        raise UsageError(f"invalid --platform {text!r}", hint=exc.hint) from None


def _row(typed: str, result: CheckResult) -> dict[str, Any]:
    ref, observation = result.ref, result.observation
    return {
        "reference": typed,
        "registry": ref.registry,
        "repository": ref.repository,
        "tag": ref.tag,
        "trusted_digest": str(ref.digest) if ref.digest else None,
        "live_digest": str(result.live_digest) if result.live_digest else None,
        "status": result.verdict.value,
        "reason": result.reason,
        "checked_at": iso_utc(observation.checked_at),
        "media_type": observation.media_type,
        "platform": result.platform,
        "platforms": (
            {name: str(digest) for name, digest in observation.platforms.items()}
            if observation.platforms is not None
            else None
        ),
    }


def _table(rows: list[dict[str, Any]]) -> str:
    body = [
        [
            printable(str(row["reference"])),
            str(row["status"]).upper(),
            printable(str(row["live_digest"] or "-")),
            printable(str(row["reason"] or "")),
        ]
        for row in rows
    ]
    return render_table(["REFERENCE", "STATUS", "LIVE DIGEST", "REASON"], body)


def _summarise(rows: list[dict[str, Any]], counts: Counter[str]) -> None:
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    err(f"checked {len(rows)} reference(s): {parts}")
    for row in rows:
        if row["status"] == Verdict.UNVERIFIABLE:
            err(f"  unverifiable: {printable(str(row['reference']))}: {printable(str(row['reason']))}")
